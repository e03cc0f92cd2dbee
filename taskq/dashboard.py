"""A web dashboard: ``taskq dashboard APP`` serves one page that shows
topics and partitions (length, lag, pending, delayed, dead letters),
workers, and periodic jobs and digests, refreshed every few seconds.

The page is static; its script reads ``/api/snapshot`` (the same figures
as JSON, for scripts too). Everything is read from Redis at each request
(``stats.py``); the dashboard changes nothing, so it is safe to run
beside production workers, and it never reads the messages themselves.
It has no login: serve it on loopback (the default) or behind a proxy
that checks who asks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import redis

from taskq import stats
from taskq.serving import Response, Server

if TYPE_CHECKING:
    from taskq.app import TaskQ

log = logging.getLogger("taskq.dashboard")

#: How often the page asks for new figures, in milliseconds.
REFRESH_MS = 2000


def snapshot(app: TaskQ) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    collected = stats.collect(app)
    return {
        "namespace": app.keys.namespace,
        "time": time.time(),
        "partitions": [asdict(p) for p in collected.partitions],
        "workers": [asdict(w) for w in collected.workers],
        "schedules": [asdict(s) for s in stats.schedules(app)],
    }


class DashboardServer(Server):
    """Serves the page and ``/api/snapshot``."""

    def __init__(self, app: TaskQ, host: str, port: int) -> None:
        def page() -> Response:
            return 200, "text/html; charset=utf-8", PAGE.encode()

        def api() -> Response:
            try:
                return 200, "application/json", json.dumps(snapshot(app)).encode()
            except (redis.RedisError, OSError) as exc:
                return _error(503, f"cannot read Redis: {exc}")
            except Exception as exc:
                log.exception("Dashboard snapshot failed:")
                return _error(500, f"cannot read the figures: {exc}")

        super().__init__("the dashboard", host, port, {"/": page, "/api/snapshot": api})


def _error(status: int, text: str) -> Response:
    return status, "application/json", json.dumps({"error": text}).encode()


PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taskq</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; }
th, td { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00; font-weight: 600; }
#status { color: #666; }
</style>
</head>
<body>
<h1>taskq <span id="namespace"></span></h1>
<p id="status">Loading...</p>
<h2>Partitions</h2>
<table id="partitions"></table>
<h2>Consumer groups</h2>
<table id="groups"></table>
<h2>Workers</h2>
<table id="workers"></table>
<h2>Periodic jobs and digests</h2>
<table id="schedules"></table>
<script>
"use strict";
const REFRESH_MS = """
    + str(REFRESH_MS)
    + """;

function fill(id, headers, rows) {
  const table = document.getElementById(id);
  table.replaceChildren();
  const head = table.insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  if (rows.length === 0) {
    const cell = table.insertRow().insertCell();
    cell.colSpan = headers.length;
    cell.textContent = "none";
    return;
  }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const value of row) {
      const td = tr.insertCell();
      const plain = value === null || value === undefined ? "-" : value;
      if (typeof plain === "object") {
        td.textContent = plain.text;
        if (plain.bad) td.className = "n bad";
      } else {
        td.textContent = String(plain);
        if (typeof plain === "number") td.className = "n";
      }
    }
  }
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function render(data) {
  document.getElementById("namespace").textContent = "(" + data.namespace + ")";
  fill("partitions",
    ["topic", "partition", "length", "delayed", "dead letters", "node"],
    data.partitions.map(p => [p.topic, p.partition, p.length, p.delayed,
      {text: String(p.dead), bad: p.dead > 0}, p.node]));
  const groups = [];
  for (const p of data.partitions) {
    for (const g of p.groups) {
      groups.push([p.topic, p.partition, g.group,
        g.lag === null ? "many" : g.lag, g.pending, age(g.oldest_pending_s),
        g.consumers]);
    }
  }
  fill("groups",
    ["topic", "partition", "group", "lag", "pending", "oldest pending", "consumers"],
    groups);
  fill("workers",
    ["worker", "host", "pid", "serves", "concurrency", "last seen", "acked",
     "retried", "dead"],
    data.workers.map(w => [w.id, w.host, w.pid, w.subscriptions.join(", "),
      w.concurrency, age(w.last_seen_s), w.acked, w.retried, w.dead]));
  fill("schedules",
    ["name", "kind", "cron", "time zone", "catch-up", "last tick", "next tick",
     "open window"],
    data.schedules.map(s => [s.name, s.kind, s.cron, s.tz, s.catchup, s.last,
      s.next, s.open_events === null ? "-" :
        s.open_events + " events (" + s.batched_events + " in batches)"]));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("api/snapshot", {cache: "no-store"});
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    render(data);
    status.textContent = "Updated " + new Date(data.time * 1000).toLocaleTimeString();
    status.className = "";
  } catch (error) {
    status.textContent = "Not updated: " + error.message;
    status.className = "bad";
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body>
</html>
"""
)
