package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestEndingsInREADME: every close the relay decides is in the README's
// answers table, with its code and reason for each side, and its Error code
// in the same row as the client's close, as the config and metrics tables
// are held to the code.
func TestEndingsInREADME(t *testing.T) {
	table := readmeSection(t, "Answers: HTTP statuses and close codes")
	for _, e := range endings {
		for side, a := range map[string]answer{"client": e.client, "upstream": e.upstream} {
			if a.code == 0 {
				continue
			}
			if want := fmt.Sprintf("%d `%s`", a.code, a.reason); !strings.Contains(table, want) {
				t.Errorf("%s (%s): the answers table lacks %s", e.cause, side, want)
			}
			if a.errorCode != "" && !slices.ContainsFunc(strings.Split(table, "\n"), func(row string) bool {
				return strings.Contains(row, fmt.Sprintf("%d `%s`", a.code, a.reason)) && strings.Contains(row, "`"+a.errorCode+"`")
			}) {
				t.Errorf("%s: no row of the answers table gives %d `%s` with the Error code %s", e.cause, a.code, a.reason, a.errorCode)
			}
		}
	}
}
