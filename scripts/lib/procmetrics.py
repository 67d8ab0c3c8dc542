#!/usr/bin/env python3
"""Process and Prometheus sampling shared by scripts/soak and scripts/bench (stdlib only).

As a module: read .run/env, scrape the services' /metrics pages, take histogram deltas
between two scrapes and their quantiles (linear interpolation within a bucket, as
Prometheus's histogram_quantile does), and read CPU seconds and memory of the stack's
processes (each pid file in .run/pids/ with all its descendants) from /proc.

As a command:

    procmetrics.py snapshot
        One sample of everything, as JSON on stdout: a check against the live system.
    procmetrics.py measure --out FILE [--interval S] -- CMD [ARGS...]
        Run CMD (a scripts/loadtest run), sampling every S seconds (default 1) while it
        runs, and write FILE: the load window (from the last sample before the first
        payment POST to the first sample after which no more payments were finalized),
        CPU seconds per process and per 1,000 finalized payments over that window, and
        the latency of each hop from the services' own metrics. Exits with CMD's status.
    procmetrics.py bench-section FILE
        The markdown section scripts/bench puts in its report, from a measure FILE.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_DIR = os.path.join(ROOT, ".run")
ENV_FILE = os.path.join(RUN_DIR, "env")
PID_DIR = os.path.join(RUN_DIR, "pids")
TANSU_DB = os.path.join(RUN_DIR, "tansu", "tansu.db")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# The stack's processes: display name -> (pid file in .run/pids, text its command line
# must contain, so that a reused pid is not mistaken for ours). Each is counted with all
# its descendants: PostgreSQL is the postmaster and its backends, RabbitMQ the
# rabbitmq-server script and the Erlang VM (beam.smp) under it.
PROCESSES = [
    ("wallet-service", "wallet-service", "target/release/wallet-service"),
    ("processor-service", "processor-service", "target/release/processor-service"),
    ("mock-gateway", "mock-gateway", "target/release/mock-gateway"),
    ("tansu", "tansu", "tansu"),
    ("postgres", "postgres", "postgres"),
    ("rabbitmq", "rabbitmq", "rabbit"),
    # The highly available topology's (scripts/up --ha, docs/HA.md); absent otherwise. Each
    # PostgreSQL node is its pg_autoctl keeper with its postmaster and backends under it.
    ("wallet-service-2", "wallet-service-2", "target/release/wallet-service"),
    ("processor-service-2", "processor-service-2", "target/release/processor-service"),
    ("haproxy", "haproxy", "haproxy"),
    ("postgres-monitor", "ha-pg-monitor", "pg_autoctl"),
    ("postgres-node1", "ha-pg-node1", "pg_autoctl"),
    ("postgres-node2", "ha-pg-node2", "pg_autoctl"),
    ("rabbitmq-1", "ha-rabbit1", "rabbit"),
    ("rabbitmq-2", "ha-rabbit2", "rabbit"),
    ("rabbitmq-3", "ha-rabbit3", "rabbit"),
]
# Rows shown only when the process ran: the HA topology's.
HA_ONLY = {"wallet-service-2", "processor-service-2", "haproxy", "postgres-monitor",
           "postgres-node1", "postgres-node2", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}

# Latency of each hop of a payment, from the services' own histograms:
# (key, label, service, metric, label filter, what it measures).
HOPS = [
    ("accept", "accept (API transaction)", "wallet", "http_request_duration_seconds",
     {"route": "/v1/payments", "method": "POST"},
     "POST /v1/payments server time: idempotency key, hold, payment, outbox row in one transaction"),
    ("relay", "outbox relay to RabbitMQ", "wallet", "outbox_publish_batch_duration_seconds", {},
     "one dispatcher batch: publish and publisher confirms"),
    ("processing", "processor, per request", "processor", "request_processing_duration_seconds", {},
     "RabbitMQ delivery to ack: gateway call and Kafka publish included"),
    ("gateway", "gateway call", "processor", "gateway_request_duration_seconds", {"operation": "charge"},
     "processor's charge call, retries not included (one observation per attempt)"),
    ("gateway_server", "gateway, its own time", "gateway", "gateway_charge_duration_seconds", {},
     "mock-gateway's time to answer a charge"),
    ("publish", "Kafka publish", "processor", "results_publish_duration_seconds", {},
     "until the broker confirmed one result (acks=all)"),
    ("finalize", "finalize batch", "wallet", "results_batch_duration_seconds", {},
     "one result batch: inbox, status, capture/release, ledger; commit"),
    ("end_to_end", "end to end", "wallet", "payment_finalization_seconds", {},
     "acceptance to finalization (finalized_at - created_at)"),
]

# ------------------------------------------------------------------ small helpers

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text):
    """Seconds in `30s`, `500ms`, `2m`, `1m30s`, `1h` or a bare number of seconds (the
    load generator's syntax)."""
    s = str(text).strip()
    try:
        v = float(s)
    except ValueError:
        pass
    else:
        if v <= 0:
            raise ValueError(f"`{text}` must be positive")
        return v
    parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"`{text}` is not a duration like 30s, 500ms, 2m, 1m30s, 1h")
    total = 0.0
    for number, unit in parts:
        if unit not in _DURATION_UNITS:
            raise ValueError(f"`{text}`: unknown unit `{unit}` (ms, s, m, h)")
        total += float(number) * _DURATION_UNITS[unit]
    if total <= 0:
        raise ValueError(f"`{text}` must be positive")
    return total


def fmt_duration(seconds):
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def load_env(path=ENV_FILE):
    """The `export K=V` lines of .run/env (values as bash's printf %q wrote them)."""
    import shlex

    env = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("export ") or "=" not in line:
                    continue
                key, _, value = line[len("export "):].partition("=")
                try:
                    words = shlex.split(value)
                except ValueError:
                    words = [value]
                env[key.strip()] = words[0] if words else ""
    except OSError:
        return None
    return env


def metrics_urls(env):
    """wallet/processor/gateway -> metrics page: the *_METRICS_URL of .run/env (or the
    environment), else the public URL + /metrics."""
    env = dict(env or {})
    out = {}
    for name, prefix in (("wallet", "WALLET"), ("processor", "PROCESSOR"), ("gateway", "GATEWAY")):
        url = env.get(f"{prefix}_METRICS_URL") or os.environ.get(f"{prefix}_METRICS_URL")
        if not url:
            base = env.get(f"{prefix}_URL") or os.environ.get(f"{prefix}_URL")
            url = base.rstrip("/") + "/metrics" if base else None
        out[name] = url
    return out


def http_get(url, timeout=5.0):
    """(status, body); status None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None, ""


# ------------------------------------------------------------------ Prometheus text

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _float(text):
    if text in ("+Inf", "Inf"):
        return float("inf")
    if text == "-Inf":
        return float("-inf")
    return float(text)


class Metrics:
    """One scrape: name -> list of (labels dict, value)."""

    def __init__(self, text="", at=None):
        self.at = time.time() if at is None else at
        self.series = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line.strip())
            if not m:
                continue
            name, labels, value = m.groups()
            try:
                v = _float(value)
            except ValueError:
                continue
            lab = {}
            if labels:
                for k, val in _LABEL.findall(labels):
                    lab[k] = val.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            self.series.setdefault(name, []).append((lab, v))

    @staticmethod
    def _match(labels, want):
        return all(labels.get(k) == v for k, v in want.items())

    def has(self, name):
        return name in self.series

    def total(self, name, **want):
        """Sum of the series of NAME whose labels include WANT; None if there is none."""
        vals = [v for lab, v in self.series.get(name, []) if self._match(lab, want)]
        return sum(vals) if vals else None

    def values(self, name, **want):
        return [(lab, v) for lab, v in self.series.get(name, []) if self._match(lab, want)]

    def hist(self, name, want=None):
        """The histogram NAME summed over its series matching WANT (e.g. every status of
        one route), or None when it has no series."""
        want = want or {}
        buckets = {}
        for lab, v in self.series.get(name + "_bucket", []):
            if "le" not in lab:
                continue
            rest = {k: x for k, x in lab.items() if k != "le"}
            if not self._match(rest, want):
                continue
            le = _float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        if not buckets:
            return None
        return Hist(sorted(buckets.items()), self.total(name + "_sum", **want) or 0.0,
                    self.total(name + "_count", **want) or 0.0)


def scrape(url, timeout=5.0):
    """A Metrics of URL, or None when it did not answer 200."""
    if not url:
        return None
    at = time.time()
    status, body = http_get(url, timeout)
    if status != 200:
        return None
    return Metrics(body, at)


class Hist:
    """A cumulative histogram: [(upper bound, cumulative count)], sum, count."""

    def __init__(self, buckets, total_sum, count):
        self.buckets = buckets
        self.sum = total_sum
        self.count = count

    def minus(self, earlier):
        """The observations made since EARLIER (a scrape of the same histogram). A counter
        that went down means the process restarted: everything it has counted since is new."""
        if earlier is None:
            return self
        if self.count < earlier.count:
            return self
        before = dict(earlier.buckets)
        return Hist([(le, max(0.0, c - before.get(le, 0.0))) for le, c in self.buckets],
                    max(0.0, self.sum - earlier.sum), self.count - earlier.count)

    def mean(self):
        return self.sum / self.count if self.count > 0 else None

    def bucket_of(self, q):
        """(lower, upper) bounds of the bucket the q-quantile falls in; None if empty."""
        b = self.buckets
        if len(b) < 2 or b[-1][1] <= 0:
            return None
        rank = q * b[-1][1]
        i = next(i for i, (_, c) in enumerate(b) if c >= rank)
        return (0.0 if i == 0 else b[i - 1][0], b[i][0])

    def quantile(self, q):
        """histogram_quantile(q): linear interpolation inside the bucket holding the rank;
        the highest finite bound if the rank falls in the +Inf bucket; None if empty."""
        b = self.buckets
        if len(b) < 2 or b[-1][0] != float("inf"):
            return None
        total = b[-1][1]
        if total <= 0:
            return None
        rank = q * total
        i = next(i for i, (_, c) in enumerate(b) if c >= rank)
        if i == len(b) - 1:
            return b[-2][0]
        upper, cum = b[i]
        if i == 0:
            lower, below = 0.0, 0.0
            if upper <= 0:
                return upper
        else:
            lower, below = b[i - 1]
        in_bucket = cum - below
        if in_bucket <= 0:
            return upper
        return lower + (upper - lower) * (rank - below) / in_bucket


def hist_delta(later, earlier, name, want=None):
    """The histogram NAME's observations between two scrapes (None if either is missing)."""
    if later is None or earlier is None:
        return None
    b = later.hist(name, want)
    if b is None:
        return None
    return b.minus(earlier.hist(name, want))


def counter_delta(later, earlier, name, **want):
    if later is None or earlier is None:
        return None
    b = later.total(name, **want)
    if b is None:
        return None
    a = earlier.total(name, **want) or 0.0
    return b - a if b >= a else b


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


# ------------------------------------------------------------------ /proc

def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _stat(pid):
    """(ppid, cpu ticks of the process and of its waited-for children, rss bytes, state)."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    rest = text[text.rfind(")") + 2:].split()
    try:
        ppid = int(rest[1])
        ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        rss = int(rest[21]) * PAGE_SIZE
    except (IndexError, ValueError):
        return None
    return ppid, ticks, rss, rest[0]


def process_table():
    """pid -> (ppid, ticks, rss, state) of every process on the machine."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s:
                table[int(entry)] = s
    return table


def descendants(root, table):
    children = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def _cmdline(pid):
    raw = _read(f"/proc/{pid}/cmdline", "rb")
    return raw.replace(b"\0", b" ").decode("utf-8", "replace") if raw else ""


def _rss_anon(pid):
    text = _read(f"/proc/{pid}/status")
    if not text:
        return None
    m = re.search(r"^RssAnon:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _pss(pid):
    text = _read(f"/proc/{pid}/smaps_rollup")
    if not text:
        return None
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def stack_pids(pid_dir=PID_DIR):
    """name -> pid of each of the stack's processes that is running (see PROCESSES)."""
    out = {}
    for name, pidfile, pattern in PROCESSES:
        text = _read(os.path.join(pid_dir, pidfile + ".pid"))
        if not text or not text.split() or not text.split()[0].isdigit():
            continue
        pid = int(text.split()[0])
        s = _stat(pid)
        if s is None or s[3] == "Z" or pattern not in _cmdline(pid):
            continue
        out[name] = pid
    return out


def process_snapshot(roots, memory=True, table=None):
    """name -> {pid, processes, cpu_seconds, rss_bytes, pss_bytes, anon_bytes} for each
    root pid, its descendants included. cpu_seconds counts user and system time of the live
    processes and of the children they have waited for (a backend that has exited is in its
    postmaster's count), so it only grows while the root lives. With MEMORY: pss_bytes
    (shared pages divided among the processes sharing them, so that a sum over PostgreSQL's
    backends counts its shared buffers once; None when /proc/PID/smaps_rollup is
    unreadable) and anon_bytes (RssAnon of /proc/PID/status: resident private anonymous
    memory, the heaps, without mapped files or shared memory such as PostgreSQL's shared
    buffers)."""
    table = table if table is not None else process_table()
    out = {}
    for name, root in roots.items():
        if root not in table:
            out[name] = None
            continue
        pids = descendants(root, table)
        ticks = sum(table[p][1] for p in pids)
        rss = sum(table[p][2] for p in pids)
        pss = anon = None
        if memory:
            parts = [_pss(p) for p in pids]
            pss = sum(parts) if parts and all(x is not None for x in parts) else None
            parts = [_rss_anon(p) for p in pids]
            anon = sum(x for x in parts if x is not None) if any(x is not None for x in parts) else None
        out[name] = {
            "pid": root,
            "processes": len(pids),
            "cpu_seconds": round(ticks / CLK_TCK, 2),
            "rss_bytes": rss,
            "pss_bytes": pss,
            "anon_bytes": anon,
        }
    return out


def _machine_ticks():
    """The machine's `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal
    ...), in clock ticks since boot over all cores; None if unreadable."""
    text = _read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            return v + [0] * (8 - len(v))
    return None


def machine_cpu_seconds():
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    v = _machine_ticks()
    if v is None:
        return None, None
    idle = v[3] + v[4]
    # guest time is already inside user and nice
    total = sum(v[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def machine_steal_seconds():
    """(steal, total) CPU seconds since boot: steal is time the hypervisor ran someone else
    while this machine had work, which slows every process here without showing in any."""
    v = _machine_ticks()
    if v is None:
        return None, None
    return v[7] / CLK_TCK, sum(v[:8]) / CLK_TCK


def tansu_db_bytes(path=TANSU_DB):
    """Size of Tansu's SQLite file and its write-ahead log (None if absent): a proxy for
    the records it keeps."""
    sizes = []
    for p in (path, path + "-wal"):
        try:
            sizes.append(os.path.getsize(p))
        except OSError:
            pass
    return sum(sizes) if sizes else None


def tansu_records(path=TANSU_DB):
    """Records Tansu holds (rows of its `record` table), read through a read-only
    connection that never blocks the broker's writes (WAL); None if unreadable."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            return db.execute("select count(*) from record").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


# ------------------------------------------------------------------ measure (scripts/bench)

class Poll:
    def __init__(self, urls, roots, at=None):
        self.at = time.time() if at is None else at
        self.mono = time.monotonic()
        self.metrics = {name: scrape(url, 3.0) for name, url in urls.items()}
        self.procs = process_snapshot(roots, memory=False)
        self.machine_busy, self.machine_total = machine_cpu_seconds()

    def pay_count(self):
        m = self.metrics.get("wallet")
        h = m.hist("http_request_duration_seconds", HOPS[0][4]) if m else None
        return h.count if h else None

    def finalized(self):
        m = self.metrics.get("wallet")
        return m.total("payments_finalized_total") if m else None


def load_window(polls):
    """(i0, i1): the last poll before the first payment POST, and the first poll after
    which no more payments were finalized. None when no payment was seen."""
    counts = [p.pay_count() for p in polls]
    base = next((c for c in counts if c is not None), None)
    if base is None:
        return None
    first = next((i for i, c in enumerate(counts) if c is not None and c > base), None)
    if first is None:
        return None
    i0 = max(0, first - 1)
    fins = [p.finalized() for p in polls]
    final = max((f for f in fins[i0:] if f is not None), default=None)
    if final is None:
        return i0, len(polls) - 1
    i1 = next(i for i in range(i0, len(polls)) if fins[i] is not None and fins[i] >= final)
    return i0, max(i1, first)


def window_summary(a, b, extra_roots=(), ends=None):
    """CPU per process and latency per hop between two polls. ENDS: name -> a poll to use
    instead of B for that process (the generator may exit before the last poll)."""
    ends = ends or {}
    seconds = b.mono - a.mono
    finalized = counter_delta(b.metrics.get("wallet"), a.metrics.get("wallet"), "payments_finalized_total")
    accepted = counter_delta(b.metrics.get("wallet"), a.metrics.get("wallet"), "payments_accepted_total")
    cpu = {}
    for name in [n for n, _, _ in PROCESSES] + list(extra_roots):
        end = ends.get(name, b)
        x, y = a.procs.get(name), end.procs.get(name)
        if not x or not y or x["pid"] != y["pid"]:
            cpu[name] = None
            continue
        s = max(0.0, y["cpu_seconds"] - x["cpu_seconds"])
        span = end.mono - a.mono
        cpu[name] = {
            "cpu_seconds": round(s, 2),
            "per_1000_finalized": round(s * 1000.0 / finalized, 3) if finalized else None,
            "percent_of_one_core": round(100.0 * s / span, 1) if span > 0 else None,
        }
        if end is not b:
            cpu[name]["until_seconds"] = round(span, 2)
    busy = None
    if a.machine_busy is not None and b.machine_busy is not None:
        busy = round(b.machine_busy - a.machine_busy, 2)
    hops = []
    for key, label, service, metric, want, what in HOPS:
        h = hist_delta(b.metrics.get(service), a.metrics.get(service), metric, want)
        hops.append({
            "hop": key, "label": label, "service": service, "metric": metric, "labels": want,
            "what": what,
            "count": int(h.count) if h else None,
            "mean_ms": ms(h.mean()) if h else None,
            "p50_ms": ms(h.quantile(0.5)) if h else None,
            "p99_ms": ms(h.quantile(0.99)) if h else None,
        })
    return {
        "seconds": round(seconds, 2),
        "finalized": finalized,
        "accepted": accepted,
        "cpu": cpu,
        "machine_busy_cpu_seconds": busy,
        "hops": hops,
    }


def outbox_wait(polls):
    """outbox_oldest_unpublished_age_seconds{channel="payments"} (a gauge the wallet-service
    refreshes every 5 s) over some polls: mean and max in ms."""
    vals = []
    for p in polls:
        m = p.metrics.get("wallet")
        v = m.total("outbox_oldest_unpublished_age_seconds", channel="payments") if m else None
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    return {"samples": len(vals), "mean_ms": ms(sum(vals) / len(vals)), "max_ms": ms(max(vals))}


def measure(out, interval, cmd):
    env = load_env() or {}
    urls = metrics_urls(env)
    roots = stack_pids()
    polls = []
    child = subprocess.Popen(cmd)
    roots_with_child = dict(roots, loadtest=child.pid)
    try:
        while True:
            polls.append(Poll(urls, roots_with_child))
            if child.poll() is not None:
                break
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and child.poll() is None:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        raise
    status = child.returncode
    report = {
        "command": cmd,
        "exit_status": status,
        "interval_seconds": interval,
        "polls": len(polls),
        "processes": {name: pid for name, pid in roots_with_child.items()},
        "metrics_urls": urls,
        "window": None,
    }
    try:
        win = load_window(polls)
        if win:
            i0, i1 = win
            # The generator may have exited by the last poll of the window: its last poll.
            alive = [p for p in polls[i0:i1 + 1] if p.procs.get("loadtest")]
            ends = {"loadtest": alive[-1]} if alive else {}
            summary = window_summary(polls[i0], polls[i1], extra_roots=("loadtest",), ends=ends)
            summary["outbox_wait"] = outbox_wait(polls[i0:i1 + 1])
            summary["from"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(polls[i0].at))
            summary["to"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(polls[i1].at))
            report["window"] = summary
    except Exception as e:  # the run's own status matters more than these figures
        report["error"] = f"{type(e).__name__}: {e}"
        print(f"procmetrics: could not summarise the run: {report['error']}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return status


# ------------------------------------------------------------------ bench-section

DISPLAY = {
    "wallet-service": "wallet-service",
    "processor-service": "processor-service",
    "mock-gateway": "mock-gateway",
    "postgres": "PostgreSQL (postmaster + backends)",
    "rabbitmq": "RabbitMQ (Erlang VM)",
    "tansu": "Kafka broker (Tansu)",
    "wallet-service-2": "wallet-service, second instance",
    "processor-service-2": "processor-service, second instance",
    "haproxy": "HAProxy",
    "postgres-monitor": "PostgreSQL pg_auto_failover monitor",
    "postgres-node1": "PostgreSQL node1 (keeper + postmaster + backends)",
    "postgres-node2": "PostgreSQL node2 (keeper + postmaster + backends)",
    "rabbitmq-1": "RabbitMQ node 1",
    "rabbitmq-2": "RabbitMQ node 2",
    "rabbitmq-3": "RabbitMQ node 3",
    "loadtest": "load generator",
}


def _num(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def bench_section(path):
    with open(path) as f:
        r = json.load(f)
    w = r.get("window")
    lines = []
    if not w:
        lines.append(f"No figures: {r['error']}." if r.get("error") else
                     "No payment was seen on the wallet-service's metrics during the run: "
                     "no per-process or per-hop figures.")
        return "\n".join(lines)
    fin = w.get("finalized")
    lines.append(f"Over the load window ({w['seconds']:.0f} s, from the first payment to the last "
                 f"finalization; {int(fin or 0):,} payments finalized, {int(w.get('accepted') or 0):,} accepted), "
                 "from /proc (user + system time, children included):")
    lines.append("")
    lines.append("| process | CPU s | CPU s per 1,000 finalized | mean % of one core |")
    lines.append("|---|---:|---:|---:|")
    total = 0.0
    for name, label in DISPLAY.items():
        c = w["cpu"].get(name)
        if c is None and name in HA_ONLY:
            continue
        if c is None:
            lines.append(f"| {label} | not running / restarted | | |")
            continue
        total += c["cpu_seconds"]
        note = f" (its first {c['until_seconds']:.0f} s)" if c.get("until_seconds") is not None else ""
        lines.append(f"| {label}{note} | {c['cpu_seconds']:.1f} | {_num(c['per_1000_finalized'], '{:.2f}')} | "
                     f"{_num(c['percent_of_one_core'])} |")
    per = total * 1000.0 / fin if fin else None
    lines.append(f"| **all of the above** | **{total:.1f}** | **{_num(per, '{:.2f}')}** | "
                 f"{_num(100.0 * total / w['seconds'] if w['seconds'] else None)} |")
    busy = w.get("machine_busy_cpu_seconds")
    if busy is not None:
        other = busy - total
        lines.append(f"| everything else on the machine | {other:.1f} | "
                     f"{_num(other * 1000.0 / fin if fin else None, '{:.2f}')} | "
                     f"{_num(100.0 * other / w['seconds'] if w['seconds'] else None)} |")
    lines.append("")
    lines.append("Latency of each hop, from the services' own histograms over the same window "
                 "(p50/p99 interpolated within Prometheus buckets: 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250 ms...):")
    lines.append("")
    lines.append("| hop | metric | count | mean ms | p50 ms | p99 ms |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for h in w["hops"]:
        metric = h["metric"]
        if h["labels"]:
            metric += "{" + ",".join(f'{k}="{v}"' for k, v in h["labels"].items()) + "}"
        lines.append(f"| {h['label']} | `{metric}` | {_num(h['count'], '{:,}')} | {_num(h['mean_ms'], '{:.2f}')} | "
                     f"{_num(h['p50_ms'], '{:.2f}')} | {_num(h['p99_ms'], '{:.2f}')} |")
    lines.append("")
    ow = w.get("outbox_wait")
    if ow:
        lines.append(f"Outbox wait (age of the oldest unpublished payment request, "
                     f"`outbox_oldest_unpublished_age_seconds{{channel=\"payments\"}}`, a gauge refreshed every 5 s; "
                     f"{ow['samples']} samples): mean {ow['mean_ms']:.1f} ms, max {ow['max_ms']:.1f} ms.")
    else:
        lines.append("Outbox wait: `outbox_oldest_unpublished_age_seconds` was not exported.")
    lines.append("")
    lines.append("The relay and finalize rows are per batch, the others per payment (the gateway call per "
                 "attempt). The generator shares the machine; \"everything else\" is whatever else ran "
                 "(/proc/stat busy time minus the rows above).")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line

def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    cmd = argv[1]
    if cmd == "snapshot":
        env = load_env() or {}
        urls = metrics_urls(env)
        roots = stack_pids()
        scrapes = {name: scrape(url) for name, url in urls.items()}
        out = {"metrics_urls": urls, "processes": process_snapshot(roots), "tansu_db_bytes": tansu_db_bytes(),
               "machine_busy_cpu_seconds": machine_cpu_seconds()[0], "metrics": {}}
        for name, m in scrapes.items():
            if m is None:
                out["metrics"][name] = None
                continue
            hists = {}
            for key, _label, service, metric, want, _what in HOPS:
                if service == name:
                    h = m.hist(metric, want)
                    hists[key] = None if h is None else {
                        "count": h.count, "mean_ms": ms(h.mean()),
                        "p50_ms": ms(h.quantile(0.5)), "p99_ms": ms(h.quantile(0.99))}
            out["metrics"][name] = {"series": sum(len(v) for v in m.series.values()), "hops_since_start": hists}
        w = scrapes.get("wallet")
        if w:
            out["table_rows_estimate"] = {lab.get("table"): v for lab, v in w.values("table_rows_estimate")}
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    if cmd == "measure":
        args = argv[2:]
        if "--" not in args:
            print("usage: procmetrics.py measure --out FILE [--interval S] -- CMD [ARGS...]", file=sys.stderr)
            return 2
        sep = args.index("--")
        opts, command = args[:sep], args[sep + 1:]
        out, interval = None, 1.0
        i = 0
        while i < len(opts):
            if opts[i] == "--out" and i + 1 < len(opts):
                out = opts[i + 1]
                i += 2
            elif opts[i] == "--interval" and i + 1 < len(opts):
                interval = parse_duration(opts[i + 1])
                i += 2
            else:
                print(f"measure: unknown option {opts[i]}", file=sys.stderr)
                return 2
        if not out or not command:
            print("usage: procmetrics.py measure --out FILE [--interval S] -- CMD [ARGS...]", file=sys.stderr)
            return 2
        return measure(out, interval, command)
    if cmd == "bench-section":
        if len(argv) != 3:
            print("usage: procmetrics.py bench-section FILE", file=sys.stderr)
            return 2
        try:
            print(bench_section(argv[2]))
        except (OSError, ValueError, KeyError) as e:
            print(f"bench-section: {argv[2]}: {e}", file=sys.stderr)
            return 1
        return 0
    print(f"unknown command {cmd} (see --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
