package main

import (
	"strings"
	"testing"
)

// TestRefusesWithoutAuthentication: the agent API can point any frontend
// anywhere, so the agent does not start with neither an identity
// (--tls-dir) nor an explicit --insecure (issue 11 item 5).
func TestRefusesWithoutAuthentication(t *testing.T) {
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "--tls-dir") {
		t.Fatalf("no --tls-dir, no --insecure: %v, want a refusal naming --tls-dir", err)
	}
	for _, args := range [][]string{{"--insecure"}, {"--tls-dir", t.TempDir()}} {
		o, err := parseFlags(args)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if o.insecure != (args[0] == "--insecure") || (o.tlsDir != "") == o.insecure {
			t.Fatalf("%v: parsed %+v", args, o)
		}
	}
	for _, gone := range []string{"--api-token", "--token"} {
		if _, err := parseFlags([]string{"--insecure", gone, "x"}); err == nil {
			t.Errorf("%s is still a flag (a secret in argv)", gone)
		}
	}
}
