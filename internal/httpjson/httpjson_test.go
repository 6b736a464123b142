package httpjson

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	type msg struct {
		A int `json:"a"`
	}
	for _, tc := range []struct {
		name, body string
		want       int   // A after a good decode
		err        error // nil: any error (when bad is set)
		bad        bool
	}{
		{name: "one value", body: `{"a":1}`, want: 1},
		{name: "white space after", body: "{\"a\":2}\n\t ", want: 2},
		{name: "unknown field", body: `{"a":1,"b":2}`, bad: true},
		{name: "second value", body: `{"a":1} {}`, bad: true, err: ErrTrailing},
		{name: "stray bracket", body: `{"a":1}]`, bad: true, err: ErrTrailing},
		{name: "garbage after", body: `{"a":1}x`, bad: true, err: ErrTrailing},
		{name: "truncated", body: `{"a":`, bad: true},
		{name: "empty", body: ``, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m msg
			err := Decode(strings.NewReader(tc.body), &m)
			switch {
			case !tc.bad && err != nil:
				t.Fatalf("Decode(%q): %v", tc.body, err)
			case !tc.bad && m.A != tc.want:
				t.Fatalf("Decode(%q): a = %d, want %d", tc.body, m.A, tc.want)
			case tc.bad && err == nil:
				t.Fatalf("Decode(%q) accepted it", tc.body)
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("Decode(%q) = %v, want %v", tc.body, err, tc.err)
			}
		})
	}
}

func TestErrorBody(t *testing.T) {
	for _, tc := range []struct {
		body        string
		ok          bool
		reason, msg string
	}{
		{`{"error":"no such thing","reason":"not_found"}`, true, "not_found", "no such thing"},
		{`{"reason":"not_found"}`, false, "not_found", ""},
		{`404 page not found`, false, "", ""},
		{``, false, "", ""},
	} {
		e, ok := Answer{Status: 404, Body: []byte(tc.body)}.ErrorBody()
		if ok != tc.ok || e.Reason != tc.reason || e.Msg != tc.msg {
			t.Errorf("ErrorBody(%q) = %+v, %v; want reason %q msg %q, %v", tc.body, e, ok, tc.reason, tc.msg, tc.ok)
		}
	}
}

// TestDecodeTolerant: a field the message type lacks (a newer sender's) is
// skipped and named, at the top and nested; everything else Decode refuses
// is still refused.
func TestDecodeTolerant(t *testing.T) {
	type inner struct {
		B string `json:"b"`
	}
	type msg struct {
		A  int   `json:"a"`
		In inner `json:"in"`
	}
	for _, tc := range []struct {
		name, body, unknown string
		want                msg
		bad                 bool
		err                 error
	}{
		{name: "known only", body: `{"a":1,"in":{"b":"x"}}`, want: msg{A: 1, In: inner{B: "x"}}},
		{name: "new field", body: `{"a":1,"home_sid":"fc00::1","in":{"b":"x"}}`, unknown: "home_sid", want: msg{A: 1, In: inner{B: "x"}}},
		{name: "new nested field", body: `{"a":2,"in":{"b":"y","c":[1,2]}}`, unknown: "c", want: msg{A: 2, In: inner{B: "y"}}},
		{name: "type error", body: `{"a":"one","x":1}`, bad: true},
		{name: "type error after a new field", body: `{"x":1,"a":"one"}`, bad: true},
		{name: "second value", body: `{"a":1,"x":1} {}`, bad: true, err: ErrTrailing},
		{name: "truncated", body: `{"a":1,"x":`, bad: true},
		{name: "empty", body: ``, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m msg
			unknown, err := DecodeTolerant(strings.NewReader(tc.body), &m)
			switch {
			case !tc.bad && err != nil:
				t.Fatalf("DecodeTolerant(%q): %v", tc.body, err)
			case !tc.bad && (m != tc.want || unknown != tc.unknown):
				t.Fatalf("DecodeTolerant(%q) = %+v, unknown %q; want %+v, %q", tc.body, m, unknown, tc.want, tc.unknown)
			case tc.bad && err == nil:
				t.Fatalf("DecodeTolerant(%q) accepted it", tc.body)
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("DecodeTolerant(%q) = %v, want %v", tc.body, err, tc.err)
			}
		})
	}
}
