package main

import (
	_ "embed"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"
)

// The command line: dgrelay takes its settings from the environment alone,
// so its only arguments are the two questions a newcomer asks of a binary.

// configurationDoc is docs/configuration.md, whose table (held to the Config
// struct by TestReadmeConfigTable) is the one place a variable's meaning is
// written: --help prints it beside the default the struct's tag gives.
//
//go:embed docs/configuration.md
var configurationDoc string

// usageLine is printed with --help and after a wrong argument.
const usageLine = "usage: dgrelay [--help | --version]   (settings come from the environment)"

// command answers the command-line arguments args (without the program's
// name). exit says the process ends now, with code: 0 for --help and
// --version, 2 (as Go's flag package) for anything else. No arguments: the
// relay runs.
func command(args []string, stdout, stderr io.Writer) (code int, exit bool) {
	if len(args) == 0 {
		return 0, false
	}
	if len(args) == 1 {
		switch args[0] {
		case "-h", "-help", "--help":
			writeHelp(stdout)
			return 0, true
		case "-version", "--version":
			fmt.Fprintf(stdout, "dgrelay %s\n", version)
			return 0, true
		}
	}
	// The arguments are not echoed whole: a pasted key may be among them.
	fmt.Fprintf(stderr, "dgrelay: unexpected argument %s\n%s\n", quoteArgument(args[0]), usageLine)
	return 2, true
}

// quoteArgument shows a wrong argument that looks like an option, and only
// its length otherwise: "dgrelay $DEEPGRAM_API_KEY" must not print the key.
func quoteArgument(a string) string {
	if strings.HasPrefix(a, "-") && len(a) <= 32 && !strings.ContainsAny(a, "=") {
		return fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf("(%d characters, not shown)", len(a))
}

// variableHelp is one environment variable in --help: its name and default.
type variableHelp struct {
	name, def string
}

// writeHelp prints every variable the Config struct reads, in its order,
// with the default from its env tag and the meaning from
// docs/configuration.md.
func writeHelp(w io.Writer) {
	meanings := configurationMeanings(configurationDoc)
	fmt.Fprintf(w, "%s\n\ndgrelay relays a browser's WebSocket to Deepgram with a key the browser never sees.\n"+
		"Every setting is an environment variable (docs/configuration.md says more of each):\n\n", usageLine)
	for _, v := range configVariables() {
		def := "(no default)"
		if v.def != "" {
			def = "default " + v.def
		}
		meaning := meanings[v.name]
		if meaning == "" {
			meaning = "see docs/configuration.md"
		}
		fmt.Fprintf(w, "  %s  %s\n      %s\n", v.name, def, meaning)
	}
}

// configVariables lists the Config struct's variables with their defaults,
// from its env tags: the list envconfig itself reads.
func configVariables() []variableHelp {
	var out []variableHelp
	ty := reflect.TypeFor[Config]()
	for i := range ty.NumField() {
		tag := ty.Field(i).Tag.Get("env")
		name, opts, _ := strings.Cut(tag, ",")
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		v := variableHelp{name: name}
		if _, d, ok := strings.Cut(opts, "default="); ok {
			v.def = d
		}
		out = append(out, v)
	}
	return out
}

// markdownLink is [text](target), shown as its text.
var markdownLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// configurationMeanings reads the variable table of docs/configuration.md
// (rows "| `NAME` | default | meaning |") into a one-line meaning per
// variable: Markdown dropped, and cut at its first "; " outside
// parentheses, where the table's longer meanings go into detail.
func configurationMeanings(doc string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		meaning := strings.TrimSpace(strings.Join(cells[3:len(cells)-1], "|"))
		meaning = strings.ReplaceAll(markdownLink.ReplaceAllString(meaning, "$1"), "`", "")
		out[name] = firstClause(meaning)
	}
	return out
}

// firstClause is s up to its first "; " outside parentheses.
func firstClause(s string) string {
	depth := 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ';':
			if depth == 0 && strings.HasPrefix(s[i+1:], " ") {
				return s[:i]
			}
		}
	}
	return s
}
