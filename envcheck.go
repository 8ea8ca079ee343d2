package main

import (
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
)

// A variable the relay does not read is ignored, which is how a misspelled
// one (ALLOWED_ORIGIN for ALLOWED_ORIGINS) used to fail: silently, the
// setting at its default. At start the relay names each variable that looks
// meant for it, with the one it likely meant; the known names are the Config
// struct's env tags (configVariables), so they cannot drift from what is
// read. Values are never read into a log line.

// processEnv is the process's environment: what envconfig.OsLookuper reads,
// and the names in it, for the check.
type processEnv struct{}

// Lookup reads one variable, as envconfig.OsLookuper does.
func (processEnv) Lookup(key string) (string, bool) { return os.LookupEnv(key) }

// Names lists every variable's name.
func (processEnv) Names() []string {
	var names []string
	for _, kv := range os.Environ() {
		if name, _, ok := strings.Cut(kv, "="); ok && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// nameLister is an environment that can list its names (processEnv; a
// test's). One that cannot is not checked.
type nameLister interface {
	Names() []string
	Lookup(key string) (string, bool)
}

// relayPrefix marks a variable as the relay's own, though none has it: an
// operator who namespaces settings (DGRELAY_PORT) is told they are unread.
const relayPrefix = "DGRELAY_"

// serviceLink is the shape of the variables Kubernetes writes for every
// Service in the namespace (enableServiceLinks): a Service named dgrelay gets
// DGRELAY_SERVICE_HOST, DGRELAY_PORT_8080_TCP and the like. They are not an
// operator's settings.
var serviceLink = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)

// unknownVariable is a variable that looks meant for the relay, and the
// known one it likely meant ("" when none is close).
type unknownVariable struct {
	name, likely string
}

// unknownVariables finds the variables in env that are not the relay's but
// look it: a close spelling of a known name (edit distance 1, or 2 for
// names of 12 letters or more, case ignored), a known name with one of its
// words left out (DEEPGRAM_KEY), or any name with the relay's prefix.
func unknownVariables(env nameLister, known []string) []unknownVariable {
	var out []unknownVariable
	names := env.Names()
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if slices.Contains(known, name) || serviceLink.MatchString(name) {
			continue
		}
		upper := strings.ToUpper(name)
		if rest, ok := strings.CutPrefix(upper, relayPrefix); ok {
			// Kubernetes' DGRELAY_PORT=tcp://... for a Service named dgrelay.
			if v, _ := env.Lookup(name); rest == "PORT" && strings.Contains(v, "://") {
				continue
			}
			likely := closest(rest, known)
			if slices.Contains(known, rest) {
				likely = rest
			}
			out = append(out, unknownVariable{name, likely})
			continue
		}
		if likely := closest(upper, known); likely != "" {
			out = append(out, unknownVariable{name, likely})
		}
	}
	return out
}

// closest is the known name that upper is a close misspelling of, or "".
func closest(upper string, known []string) string {
	best, bestDistance := "", -1
	for _, k := range known {
		d := editDistance(upper, k)
		// Two edits in a short name make another word: LISTEN_PORT is
		// not a misspelling of LISTEN_HOST.
		limit := 1
		if len(k) >= 12 {
			limit = 2
		}
		if d <= limit && (bestDistance < 0 || d < bestDistance) {
			best, bestDistance = k, d
		}
	}
	if best != "" {
		return best
	}
	for _, k := range known {
		if oneWordShort(upper, k) {
			return k
		}
	}
	return ""
}

// oneWordShort reports whether name is known with one of its _-separated
// words left out, and keeps two or more: DEEPGRAM_KEY for DEEPGRAM_API_KEY,
// not PORT for METRICS_PORT.
func oneWordShort(name, known string) bool {
	words, have := strings.Split(known, "_"), strings.Split(name, "_")
	if len(have) < 2 || len(have) != len(words)-1 {
		return false
	}
	for i := range words {
		if slices.Equal(have, slices.Concat(words[:i], words[i+1:])) {
			return true
		}
	}
	return false
}

// editDistance is the optimal string alignment distance between a and b
// (insertions, deletions, substitutions and swaps of neighbours, each 1), on
// bytes: the names compared are ASCII. Both are short (a variable's name),
// and a longer one is cut at 64 bytes, so the table stays small.
func editDistance(a, b string) int {
	const most = 64
	a, b = a[:min(len(a), most)], b[:min(len(b), most)]
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// warnUnknownVariables logs one warning per variable that looks meant for
// the relay but is not read, naming the likely one. Only names are logged.
func warnUnknownVariables(log *slog.Logger, env any) {
	lister, ok := env.(nameLister)
	if !ok {
		return
	}
	var known []string
	for _, v := range configVariables() {
		known = append(known, v.name)
	}
	for _, u := range unknownVariables(lister, known) {
		if u.likely != "" {
			log.Warn(u.name+" is not a dgrelay variable and is ignored: did you mean "+u.likely+"?", "variable", u.name, "likely", u.likely)
		} else {
			log.Warn(u.name+" is not a dgrelay variable and is ignored (dgrelay --help lists them)", "variable", u.name)
		}
	}
}
