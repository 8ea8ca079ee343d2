package main

import (
	"flag"
	"fmt"
	"io"
	"sync"
	"time"
)

// together, when set, runs only the voice load, on every proxy at once with
// this many sessions each, for a few rounds. The proxies then share every
// moment of the machine: on a shared VM whose speed drifts by tens of
// percent from one minute to the next, their ratios come out steady where
// those of paths measured one after another do not.
var together = flag.Int("together", 0, "run only the voice load, on every proxy at once, with this many sessions each")

// togetherRounds is how many times the load is run.
const togetherRounds = 4

// voiceTogether runs the voice load on every proxy of paths at once, rounds
// times, and writes each round's CPU per message relayed, per proxy, with
// its ratio to the -base path's (nginx's by default).
func voiceTogether(w io.Writer, paths []*proxyPath, n int, dur time.Duration, rounds int) error {
	var proxies []*proxyPath
	for _, p := range paths {
		if p.procs != nil {
			proxies = append(proxies, p)
		}
	}
	if len(proxies) == 0 {
		return fmt.Errorf("-together needs a proxy path")
	}
	fmt.Fprintf(w, "\nCPU per message relayed (µs), every proxy under %d voice sessions of its own at once, %s a round\n\n", n, dur)
	header, rule := "| round |", "|---|"
	for _, p := range proxies {
		header += " " + p.name + " |"
		rule += "---|"
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, rule)
	for r := 1; r <= rounds; r++ {
		res := make([]voiceResult, len(proxies))
		errs := make([]error, len(proxies))
		var wg sync.WaitGroup
		for i, p := range proxies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = voice(p, n, dur)
			}()
		}
		wg.Wait()
		var base float64
		for i, p := range proxies {
			if errs[i] != nil {
				return fmt.Errorf("%s: voice: %w", p.name, errs[i])
			}
			if p.name == *ratioBase {
				base = us(res[i].cpuPerMessage)
			}
		}
		line := fmt.Sprintf("| %d |", r)
		for i, p := range proxies {
			v := us(res[i].cpuPerMessage)
			cell := fmt.Sprintf(" %.1f", v)
			if base > 0 && p.name != *ratioBase {
				cell += fmt.Sprintf(" (%.2f×)", v/base)
			}
			line += cell + " |"
		}
		fmt.Fprintln(w, line)
	}
	return nil
}
