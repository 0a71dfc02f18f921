// Command benchreport writes BENCHMARKS.md from one run of scripts/bench:
// the raw `go test -bench` output, benchstat's table of it, the verbose
// output of the round-trip and concurrency tests, and pprof listings. It
// computes the SDK/baseline ratios from the medians of the runs and judges
// them against the targets. It measures nothing itself.
package main

import (
	"bufio"
	"bytes"
	_ "embed"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

//go:embed findings.md
var findings string

func main() {
	var o options
	flag.StringVar(&o.bench, "bench", "", "go test -bench output")
	flag.StringVar(&o.benchstat, "benchstat", "", "benchstat output")
	flag.StringVar(&o.tests, "tests", "", "go test -v output of the round-trip and concurrency tests")
	flag.StringVar(&o.allocTop, "alloc-top", "", "pprof -top of allocations (SDK check, in memory)")
	flag.StringVar(&o.allocList, "alloc-list", "", "pprof -list of allocations in the SDK's request path")
	flag.StringVar(&o.cpuTop, "cpu-top", "", "pprof -top -cum of CPU (SDK check, in memory)")
	flag.StringVar(&o.cpuAutoBuyTop, "cpu-autobuy-top", "", "pprof -top -cum of CPU (SDK auto-buy gate, in memory)")
	flag.StringVar(&o.interleaved, "interleaved", "", "interleaved in-memory benchmark output, lines prefixed round=N")
	flag.StringVar(&o.economy, "economy", "", "go test -v output of TestRequestEconomy, TestLatencyPerPath and TestScale")
	flag.StringVar(&o.interCmd, "inter-cmd", "", "the interleaved benchmark command")
	flag.StringVar(&o.economyCmd, "economy-cmd", "", "the request-economy test command")
	flag.StringVar(&o.latencyCmd, "latency-cmd", "", "the latency test command")
	flag.StringVar(&o.scaleCmd, "scale-cmd", "", "the scale test command")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "report to write")
	flag.StringVar(&o.command, "command", "scripts/bench", "the one command that reproduces the report")
	flag.StringVar(&o.benchCmd, "bench-cmd", "", "the benchmark command line")
	flag.StringVar(&o.testCmd, "test-cmd", "", "the test command line")
	flag.StringVar(&o.profCmd, "prof-cmd", "", "the profiling command lines")
	flag.StringVar(&o.statCmd, "benchstat-cmd", "", "the benchstat command line")
	flag.StringVar(&o.goVersion, "go", "", "go version output")
	flag.StringVar(&o.arch, "arch", "", "uname -m")
	flag.StringVar(&o.nproc, "nproc", "", "nproc")
	flag.StringVar(&o.cpu, "cpu", "", "CPU model")
	flag.StringVar(&o.date, "date", "", "date of the run")
	flag.StringVar(&o.loadBefore, "load-before", "", "load average before the run")
	flag.StringVar(&o.loadAfter, "load-after", "", "load average after the run")
	flag.StringVar(&o.testStatus, "test-status", "0", "exit status of the tests")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

type options struct {
	bench, benchstat, tests, allocTop, allocList, cpuTop, cpuAutoBuyTop, out string
	command, benchCmd, testCmd, profCmd, statCmd                             string
	goVersion, arch, nproc, cpu, date, loadBefore, loadAfter, testStatus     string
	interleaved, economy, interCmd, economyCmd, latencyCmd, scaleCmd         string
}

func run(o options) error {
	benchOut, err := os.ReadFile(o.bench)
	if err != nil {
		return err
	}
	res := parseBench(benchOut)
	if len(res) == 0 {
		return fmt.Errorf("%s: no benchmark results", o.bench)
	}
	testOut, err := os.ReadFile(o.tests)
	if err != nil {
		return err
	}
	if o.economy != "" {
		econ, err := os.ReadFile(o.economy)
		if err != nil {
			return err
		}
		testOut = append(testOut, econ...)
	}
	logs := parseLogs(testOut)
	inter, err := parseInterleaved(o.interleaved)
	if err != nil {
		return err
	}
	read := func(path string) string {
		if path == "" {
			return ""
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "(" + err.Error() + ")"
		}
		return strings.TrimRight(string(b), "\n")
	}

	var w bytes.Buffer
	r := report{w: &w, res: res, logs: logs, inter: inter}
	r.header(o)
	r.targets()
	r.economy(o.economyCmd)
	r.latency(o.latencyCmd)
	r.scale(o.scaleCmd)
	r.overhead(o.interCmd)
	r.ratios()
	r.roundTrips()
	r.concurrency()
	r.section("## benchstat", "Medians of the runs with 95% confidence intervals; the `vs base` column is the SDK against the baseline (a positive change costs more).")
	r.block(read(o.benchstat))
	r.section("## Profiles (in-memory transport)", "From the profiling commands above, in the same run.")
	r.details("Entitlement check: allocations, top (alloc_objects)", read(o.allocTop))
	r.details("Entitlement check: allocations per line of the request path (alloc_objects)", read(o.allocList))
	r.details("Entitlement check: CPU, top by cumulative time", read(o.cpuTop))
	r.details("Auto-buy gate: CPU, top by cumulative time", read(o.cpuAutoBuyTop))
	w.WriteString("\n" + strings.TrimSpace(findings) + "\n")
	if st := strings.TrimSpace(o.testStatus); st != "0" {
		fmt.Fprintf(&w, "\n**The tests exited with status %s in this run; see the failures in the test output.**\n", st)
	}
	return os.WriteFile(o.out, w.Bytes(), 0o644)
}

// result holds, per benchmark name (without the -GOMAXPROCS suffix), the
// values of each unit over the runs.
type result map[string]map[string][]float64

var procSuffix = regexp.MustCompile(`-\d+$`)

func parseBench(b []byte) result {
	res := result{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := procSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		if res[name] == nil {
			res[name] = map[string][]float64{}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res[name][f[i+1]] = append(res[name][f[i+1]], v)
		}
	}
	return res
}

func (r result) median(name, unit string) (float64, bool) {
	vs := slices.Clone(r[name][unit])
	if len(vs) == 0 {
		return 0, false
	}
	sort.Float64s(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2], true
	}
	return (vs[n/2-1] + vs[n/2]) / 2, true
}

func (r result) runs(name string) int {
	best := 0
	for _, vs := range r[name] {
		best = max(best, len(vs))
	}
	return best
}

// logLine is one "kind key=value ..." line logged by the tests.
type logLine map[string]string

var kv = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

func parseLogs(b []byte) map[string][]logLine {
	out := map[string][]logLine{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, kind := range []string{"roundtrips", "concurrency", "coldstart", "economy", "latency", "scale", "fakeheap"} {
			i := strings.Index(line, ": "+kind+" ")
			if i < 0 {
				continue
			}
			l := logLine{}
			for _, m := range kv.FindAllStringSubmatch(line[i+len(kind)+3:], -1) {
				v := m[2]
				if uq, err := strconv.Unquote(v); err == nil {
					v = uq
				}
				l[m[1]] = v
			}
			out[kind] = append(out[kind], l)
		}
	}
	return out
}

func find(lines []logLine, key, val string, more ...string) logLine {
	for _, l := range lines {
		if l[key] != val {
			continue
		}
		ok := true
		for i := 0; i+1 < len(more); i += 2 {
			ok = ok && l[more[i]] == more[i+1]
		}
		if ok {
			return l
		}
	}
	return nil
}

type report struct {
	w     *bytes.Buffer
	res   result
	logs  map[string][]logLine
	inter interleaved
}

func (r report) printf(format string, args ...any) { fmt.Fprintf(r.w, format, args...) }

func (r report) section(title, text string) {
	r.printf("\n%s\n\n", title)
	if text != "" {
		r.printf("%s\n\n", text)
	}
}

func (r report) block(s string) { r.printf("```\n%s\n```\n", s) }

func (r report) details(summary, s string) {
	if s == "" {
		return
	}
	r.printf("<details><summary>%s</summary>\n\n```\n%s\n```\n\n</details>\n\n", summary, s)
}

func (r report) header(o options) {
	r.printf("# Benchmarks\n\n")
	r.printf("What the SDK costs beyond the network, against a baseline that does the same HTTP exchanges with plain\n")
	r.printf("`net/http` + `encoding/json` (same headers, a deadline per call, a capped body read, the same JSON decoded\n")
	r.printf("into equivalent structs; no retries, locks, coalescing or derived keys). The suite is the package\n")
	r.printf("[`bench`](bench/); this file is generated, numbers included, by one command:\n\n")
	r.printf("```\n%s\n```\n\n", o.command)
	r.printf("It runs, in this order:\n\n```\n%s\n%s\n%s\n%s\n```\n\n", o.testCmd, o.benchCmd, o.statCmd, o.profCmd)
	r.printf("| machine | |\n|---|---|\n")
	r.printf("| date | %s |\n| go | %s |\n| arch | %s |\n| CPUs (nproc) | %s |\n| CPU | %s |\n",
		o.date, o.goVersion, o.arch, o.nproc, o.cpu)
	r.printf("| load average (1, 5, 15 min) before / after | %s / %s |\n\n", o.loadBefore, o.loadAfter)
	r.printf("`via=mem` is an in-memory `http.RoundTripper` answering the contract's JSON samples: the client's own cost\n")
	r.printf("(ns/op, B/op, allocs/op). `via=loop` is the `quotastacktest` fake on loopback, a fresh server per measurement;\n")
	r.printf("the server runs in the same process, so its CPU and allocations are in those figures too. Each figure below\n")
	r.printf("is the median of the runs; a ratio is SDK / baseline of the medians. The machine is shared: a high load\n")
	r.printf("average above means noisy timings (allocation counts are exact either way).\n")
}

func verdict(ok bool) string {
	if ok {
		return "**PASS**"
	}
	return "**MISS**"
}

func (r report) ratio(name, unit string) (sdk, raw, ratio float64, ok bool) {
	raw, ok1 := r.res.median(name+"/client=raw", unit)
	sdk, ok2 := r.res.median(name+"/client=sdk", unit)
	if !ok1 || !ok2 || raw == 0 {
		return 0, 0, 0, false
	}
	return sdk, raw, sdk / raw, true
}

func (r report) targets() {
	r.section("## Targets", "")
	r.printf("| target | measured | result |\n|---|---|---|\n")
	r.overheadTargets()
	rt := r.logs["roundtrips"]
	happyBench, _ := r.res.median("GateHappy/via=loop/client=sdk", "roundtrips/op")
	if l := find(rt, "path", "happy"); l != nil {
		n, _ := strconv.Atoi(l["sdk"])
		r.printf("| happy-path gate = 2 round trips | %d (test), %.2f/op (benchmark, loopback) | %s |\n", n, happyBench, verdict(n == 2 && happyBench == 2))
	}
	abBench, _ := r.res.median("GateAutoBuy/via=loop/client=sdk", "roundtrips/op")
	if l := find(rt, "path", "auto_buy"); l != nil {
		n, _ := strconv.Atoi(l["sdk"])
		r.printf("| auto-buy gate ≤ 6 round trips | %d (test), %.2f/op (benchmark, loopback) | %s |\n", n, abBench, verdict(n <= 6 && abBench <= 6))
	}
	if l := find(r.logs["concurrency"], "client", "sdk", "transport", "default"); l != nil {
		conns, _ := strconv.Atoi(l["conns"])
		after, _ := strconv.Atoi(l["conns_after_warmup"])
		r.printf("| 64 goroutines, %s gates: ≤ 64 TCP connections opened | %d (%s during the first %s gates, %d after) | %s |\n",
			l["gates"], conns, l["conns_warmup"], l["warmup_gates"], after, verdict(conns <= 64))
		r.printf("| … and no churn: no connection opened after the warm-up | %d | %s |\n", after, verdict(after == 0))
	}
	r.printf("\nA MISS is explained under [Findings](#findings).\n")
}

func (r report) ratios() {
	r.section("## SDK / baseline", "Medians per operation; × is SDK / baseline.")
	r.printf("| operation | via | ns/op baseline | ns/op SDK | × | B/op baseline | B/op SDK | × | allocs/op baseline | allocs/op SDK | × | round trips/op | runs |\n")
	r.printf("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, op := range []string{"Check", "Record", "GateHappy", "GateAutoBuy"} {
		for _, via := range []string{"mem", "loop"} {
			name := op + "/via=" + via
			if r.res.runs(name+"/client=sdk") == 0 {
				continue
			}
			r.printf("| %s | %s", op, via)
			for _, unit := range []string{"ns/op", "B/op", "allocs/op"} {
				sdk, raw, x, ok := r.ratio(name, unit)
				if !ok {
					r.printf(" | | | ")
					continue
				}
				r.printf(" | %.0f | %.0f | %.2f", raw, sdk, x)
			}
			rt, _ := r.res.median(name+"/client=sdk", "roundtrips/op")
			r.printf(" | %.0f | %d |\n", rt, r.res.runs(name+"/client=sdk"))
		}
	}
	name := "GateParallel64"
	if r.res.runs(name+"/client=sdk") > 0 {
		r.printf("\nThe gate from 64 goroutines across 1,000 customers (`BenchmarkGateParallel64`, loopback, happy path; ")
		r.printf("conns is what the server accepted during the last measurement of each run):\n\n")
		r.printf("| | baseline | SDK | × |\n|---|--:|--:|--:|\n")
		for _, unit := range []string{"ns/op", "gates/s", "B/op", "allocs/op", "conns", "roundtrips/op"} {
			if sdk, raw, x, ok := r.ratio(name, unit); ok {
				r.printf("| %s | %.0f | %.0f | %.2f |\n", unit, raw, sdk, x)
			}
		}
	}
}

func (r report) roundTrips() {
	r.section("## Round trips per gate", "Counted from the fake server's request log by `TestRoundTripsPerPath` (one gate per path, a fresh customer each). "+
		"The baseline is the seed recipe by hand: check; allowed: record; not allowed: read the wallet, and if it covers the plan, debit, grant, check again, record.")
	r.printf("| path | SDK | baseline | SDK requests (status) | baseline requests (status) |\n|---|--:|--:|---|---|\n")
	for _, l := range r.logs["roundtrips"] {
		r.printf("| %s (%s) | %s | %s | %s | %s |\n", l["path"], l["reason"], l["sdk"], l["raw"], l["sdk_sequence"], l["raw_sequence"])
	}
}

func (r report) concurrency() {
	r.section("## Connections and throughput under concurrency",
		"`TestGateConcurrency`: 64 goroutines gate across 1,000 customers holding plenty of plan credits, on a fresh server per client; "+
			"the server counts the TCP connections it accepts. `sdk/default` is the SDK as shipped (at most 64 connections per host); `raw/pooled` is the "+
			"baseline with the SDK's pool sizes; `raw/godefault` is the baseline on a clone of `http.DefaultTransport` (2 idle connections per host).")
	r.printf("| client / transport | gates | conns | warm-up gates | during warm-up | after warm-up | gates/s | round trips/gate |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, l := range r.logs["concurrency"] {
		r.printf("| %s / %s | %s | %s | %s | %s | %s | %s | %s |\n", l["client"], l["transport"], l["gates"], l["conns"],
			l["warmup_gates"], l["conns_warmup"], l["conns_after_warmup"], l["gates_per_s"], l["roundtrips_per_gate"])
	}
	if cs := r.logs["coldstart"]; len(cs) > 0 {
		r.printf("\nCold starts repeated (each a fresh server and client, %s gates from %s goroutines), connections opened per trial:\n\n",
			cs[0]["gates"], cs[0]["goroutines"])
		r.printf("| client / transport | conns per trial |\n|---|---|\n")
		for _, l := range cs {
			r.printf("| %s / %s | %s |\n", l["client"], l["transport"], strings.ReplaceAll(l["conns"], ",", ", "))
		}
	}
}
