#!/usr/bin/env python3
"""A stand-in for the seeds' model-service, for trying the whole chain by hand (README,
"The chain by hand"): serves Prometheus metrics for versions v1 and v2 of model-service in
sms-app, as if each served --rps predictions a second, with the given error ratios, latencies
and negative-feedback ratios. Standard library only.

    python3 deploy/local/canary_app.py --port 9100 --v2-error-ratio 0.4

Send SIGUSR1 to heal v2 (its error ratio becomes v1's) while it runs.
"""
import argparse
import http.server
import signal
import threading
import time

BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
LABELS = 'namespace="sms-app",service="model-service"'


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--rps", type=float, default=50)
    for v, err, lat, neg in (("v1", 0.01, 0.05, 0.05), ("v2", 0.01, 0.05, 0.05)):
        p.add_argument(f"--{v}-error-ratio", type=float, default=err)
        p.add_argument(f"--{v}-latency", type=float, default=lat)
        p.add_argument(f"--{v}-negative-feedback-ratio", type=float, default=neg)
    args = p.parse_args()
    behaviour = {
        v: {k: getattr(args, f"{v}_{k}") for k in ("error_ratio", "latency", "negative_feedback_ratio")}
        for v in ("v1", "v2")
    }
    counters = {v: {"ok": 0.0, "error": 0.0, "sum": 0.0, "buckets": [0.0] * len(BUCKETS), "pos": 0.0, "neg": 0.0}
                for v in behaviour}
    lock = threading.Lock()

    def heal(*_):
        with lock:
            behaviour["v2"]["error_ratio"] = behaviour["v1"]["error_ratio"]
        print("v2 healed", flush=True)

    signal.signal(signal.SIGUSR1, heal)

    def tick():
        while True:
            time.sleep(0.1)
            n = args.rps / 10
            with lock:
                for v, b in behaviour.items():
                    c = counters[v]
                    c["error"] += n * b["error_ratio"]
                    c["ok"] += n * (1 - b["error_ratio"])
                    c["sum"] += n * b["latency"]
                    for i, le in enumerate(BUCKETS):
                        if b["latency"] <= le:
                            c["buckets"][i] += n
                    c["neg"] += n * b["negative_feedback_ratio"]
                    c["pos"] += n * (1 - b["negative_feedback_ratio"])

    def exposition():
        out = ["# HELP app_predictions_total Predictions served.", "# TYPE app_predictions_total counter"]
        with lock:
            for v, c in counters.items():
                for status in ("ok", "error"):
                    out.append(f'app_predictions_total{{{LABELS},version="{v}",status="{status}"}} {c[status]!r}')
            out += ["# HELP app_prediction_latency_seconds Prediction latency.",
                    "# TYPE app_prediction_latency_seconds histogram"]
            for v, c in counters.items():
                total = c["ok"] + c["error"]
                for le, count in zip(BUCKETS, c["buckets"]):
                    out.append(f'app_prediction_latency_seconds_bucket{{{LABELS},version="{v}",le="{le}"}} {count!r}')
                out.append(f'app_prediction_latency_seconds_bucket{{{LABELS},version="{v}",le="+Inf"}} {total!r}')
                out.append(f'app_prediction_latency_seconds_sum{{{LABELS},version="{v}"}} {c["sum"]!r}')
                out.append(f'app_prediction_latency_seconds_count{{{LABELS},version="{v}"}} {total!r}')
            out += ["# HELP app_prediction_feedback_total User feedback on predictions.",
                    "# TYPE app_prediction_feedback_total counter"]
            for v, c in counters.items():
                out.append(f'app_prediction_feedback_total{{{LABELS},version="{v}",feedback="positive"}} {c["pos"]!r}')
                out.append(f'app_prediction_feedback_total{{{LABELS},version="{v}",feedback="negative"}} {c["neg"]!r}')
        return "\n".join(out) + "\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    threading.Thread(target=tick, daemon=True).start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"canary app on http://127.0.0.1:{args.port}/metrics", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
