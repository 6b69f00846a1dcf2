//! The on-call page in a real browser: `tests/browser/test_ui.py` drives Debian's chromium through
//! chromedriver (PyPI's selenium) against the real binary, which has just rolled the demo canary
//! back on an alert whose labels carry script and markup. It loads the overview and finds the
//! rollback, follows the permalink of the object's `backstop.io/action-id`, checks that no script
//! from the labels ran, watches a record arrive live, presses Pause and sees the next alert held,
//! and presses Undo and sees the weights back. Its screenshots are the ones in docs/
//! (`BACKSTOP_UPDATE_SCREENSHOTS=1` writes them there).
//!
//! And the link a Kubernetes Event carries: backstop on the API emulator (the kubernetes target)
//! with `ui.url` and basic auth rolls the demo back; the test takes the URL out of the Event's
//! message, checks the id in it is the object's `backstop.io/action-id`, and opens it in chromium.

use std::process::Command;

use serde_json::Value;

use crate::support::backstop::{Workdir, eventually, repo};
use crate::support::kube::KubeEmulator;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const SKIP_ENV: &str = "BACKSTOP_SKIP_EXTERNAL";

/// Whether the browser, its driver and selenium are here; why not, when not.
fn browser() -> Result<(), String> {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !std::path::Path::new(bin).exists() {
            return Err(format!("{bin} is missing (Debian packages chromium, chromium-driver)"));
        }
    }
    match Command::new("python3").args(["-c", "import selenium"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("python3 cannot import selenium (PyPI's selenium; ./test installs it)".into()),
    }
}

/// Whether to run: the browser is here, or skipped by `BACKSTOP_SKIP_EXTERNAL=1` (else a panic).
fn run_browser_test() -> bool {
    match browser() {
        Ok(()) => true,
        Err(why) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            eprintln!("skipped: {why}; {SKIP_ENV}=1");
            false
        }
        Err(why) => panic!("the browser test needs {why}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_on_call_page_in_a_real_browser() {
    if !run_browser_test() {
        return;
    }
    let wd = Workdir::new();
    let server = wd.serve();
    // The demo's alert, its labels carrying script and markup.
    let hostile = FIRING.replace(
        "\"canary\":\"v2\"",
        "\"canary\":\"v2\",\"note\":\"<script>window.__pwned=1</script>\",\"x\":\"<img src=x onerror=window.__pwned=2>\"",
    );
    assert_ne!(hostile, FIRING);
    let (status, body) = server.post("/v1/alertmanager", "application/json", hostile).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("applied")), "{body}");
    let vs = wd.read("deploy/local/model-service.yaml");
    let action = vs
        .lines()
        .find_map(|l| l.trim().strip_prefix("backstop.io/action-id:"))
        .map(|v| v.trim().trim_matches('\'').to_string())
        .expect("the object carries its action id");
    let shots = match std::env::var("BACKSTOP_UPDATE_SCREENSHOTS").as_deref() {
        Ok("1") => repo("docs"),
        _ => wd.path("screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    // A second alert of the same rule on the same target (another instance of it).
    let second = FIRING.replace("a9c5c3b76558e44d", "0123456789abcdef");
    assert_ne!(second, FIRING);
    let out = Command::new("python3")
        .arg(repo("tests/browser/test_ui.py"))
        .env("BACKSTOP_URL", &server.url)
        .env("BACKSTOP_ACTION_ID", &action)
        .env("BACKSTOP_MANIFEST", wd.path("deploy/local/model-service.yaml"))
        .env("BACKSTOP_FIRING", &second)
        .env("BACKSTOP_SCREENSHOTS", &shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\nserver log:\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    assert!(stdout.contains("ok: after Undo, the canary has its weight back"), "{stdout}");
    for shot in ["ui-overview.png", "ui-action.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000, "{shot}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_event_links_to_the_action_s_page_in_a_real_browser() {
    if !run_browser_test() {
        return;
    }
    const USER: &str = "oncall";
    const PASSWORD: &str = "correct horse battery staple";
    let emu = KubeEmulator::with_demo().await;
    // `ui.url` is the server's own address (as people reach it): its port is chosen first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let wd = crate::kubernetes::workdir(&emu, "", "10s");
    let config = wd.read("backstop.yaml");
    let configured = config.replace("  # url: https://backstop.example.com\n", &format!("  url: {base}/\n")).replace(
        "\nhttp:\n",
        &format!("\nhttp:\n  auth: {{basic: {{username: {USER}, password_env: BACKSTOP_UI_PASSWORD}}}}\n"),
    );
    assert_eq!(configured.matches(&format!("url: {base}/")).count(), 1, "backstop.yaml's ui section changed");
    assert!(configured.contains("password_env: BACKSTOP_UI_PASSWORD"), "backstop.yaml's http section changed");
    std::fs::write(wd.config(), configured).unwrap();
    let server = wd.serve_on(&format!("127.0.0.1:{port}"), &[("BACKSTOP_UI_PASSWORD", PASSWORD)]);
    assert_eq!(server.url, base);

    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/v1/alertmanager"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json")
        .body(FIRING)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}\n{}", server.log());

    // The Event on the VirtualService, and the link its message ends with.
    let events = eventually(std::time::Duration::from_secs(5), || {
        let events = emu.events();
        (!events.is_empty()).then_some(events)
    })
    .await
    .expect("an Event about the action");
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(
        (event["reason"].as_str(), event["involvedObject"]["name"].as_str()),
        (Some("BackstopApplied"), Some("model-service"))
    );
    let message = event["message"].as_str().unwrap();
    let (said, link) = message.split_once(" — see ").unwrap_or_else(|| panic!("no link in the Event: {message}"));
    let id = link.strip_prefix(&format!("{base}/ui/actions/")).unwrap_or_else(|| panic!("{link}: not under ui.url"));
    let vs = emu.get("networking.istio.io/v1", "VirtualService", "sms-app", "model-service").unwrap();
    let annotated = vs["metadata"]["annotations"]["backstop.io/action-id"].as_str().unwrap();
    assert_eq!(id, annotated, "the Event's link names the action the object's annotation names");
    assert_eq!(Some(id), body["results"][0]["action_id"].as_str());
    assert!(said.starts_with(&format!("backstop action {id} (rule canary-high-error-rate): changed ")), "{message}");

    // The page is behind the credentials: the browser gets in with them.
    let refused = http.get(link).send().await.unwrap();
    assert_eq!(refused.status(), 401, "the action's page without credentials");

    let shots = wd.path("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new("python3")
        .arg(repo("tests/browser/test_ui.py"))
        .env("BACKSTOP_PERMALINK", link)
        .env("BACKSTOP_ACTION_ID", annotated)
        .env("BACKSTOP_TARGET", "sms-app/model-service")
        .env("BACKSTOP_BASIC_AUTH", format!("{USER}:{PASSWORD}"))
        .env("BACKSTOP_SCREENSHOTS", &shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\nserver log:\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    for line in [
        "ok: the browser is at the Event's link",
        "ok: the page is the action's, by the id the object's annotation carries",
        "ok: the action page names the target",
        "ok: the applied row shows the weights before and after",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    eprintln!("the browser followed the Event's link in {:?}", started.elapsed());
    assert!(std::fs::metadata(shots.join("ui-action-from-event.png")).unwrap().len() > 10_000);
}
