//! The on-call page in a real browser: `tests/browser/test_ui.py` drives Debian's chromium through
//! chromedriver (PyPI's selenium) against the real binary, which has just rolled the demo canary
//! back on an alert whose labels carry script and markup. It loads the overview and finds the
//! rollback, follows the permalink of the object's `backstop.io/action-id`, checks that no script
//! from the labels ran, watches a record arrive live, presses Pause and sees the next alert held,
//! and presses Undo and sees the weights back. Its screenshots are the ones in docs/
//! (`BACKSTOP_UPDATE_SCREENSHOTS=1` writes them there).

use std::process::Command;

use crate::support::backstop::{Workdir, repo};

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

#[tokio::test(flavor = "multi_thread")]
async fn the_on_call_page_in_a_real_browser() {
    if let Err(why) = browser() {
        if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            eprintln!("skipped: {why}; {SKIP_ENV}=1");
            return;
        }
        panic!("the browser test needs {why}");
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
