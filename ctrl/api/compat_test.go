package api

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/test/testport"
)

// TestPeerForwardCompatible: a peer (another domain's cluster, which may
// run a newer roam) may send fields this version does not know: the call
// goes through, the field is skipped and counted. A malformed peer body
// still gets a clear 400, and a user's body stays strict.
func TestPeerForwardCompatible(t *testing.T) {
	in := newInstall(t, "a", "b")
	a, b := in.cl["a"], in.cl["b"]
	port := testport.Free(t, in.dir.data["b"][0])
	// a, the home, asks b for a copy with a field of a newer version, at
	// the top and in the service.
	body := `{"home":"a","home_url":"` + in.dir.urls["a"] + `","epoch":{"migration_id":"m1","n":1},` +
		`"next_version_field":{"x":[1,2]},"service":{"name":"web","demo":true,"future_knob":7,` +
		`"ports":[{"port":` + strconv.Itoa(int(port)) + `,"protocol":"tcp"}]}}`
	code, out := send(t, as(t, a.dir), "POST", in.dir.urls["b"]+"/v1/peer/foreign", "", body)
	if code != 200 {
		t.Fatalf("peer deploy with a newer version's fields: %d %s", code, out)
	}
	t.Cleanup(func() { _ = b.be.Delete(context.Background(), "web") })
	if r, err := b.eng.Get("web"); err != nil || r.Kind != ctrl.KindForeign || r.Home != "a" {
		t.Fatalf("b's record: %+v %v", r, err)
	}
	if n := counterValue(b.srv.unknown.WithLabelValues("POST /v1/peer/foreign")); n != 1 {
		t.Errorf("roam_ctrl_api_unknown_fields_total{route=POST /v1/peer/foreign} = %v, want 1", n)
	}
	// A moved-on notice with a newer field gets past decoding to the
	// handler's own checks (here: incomplete).
	code, out = send(t, as(t, b.dir), "POST", in.dir.urls["a"]+"/v1/peer/moved-on", "", `{"service":"web","srv6_sid":"fc00::1","later":true}`)
	if code != 400 || !strings.Contains(out, `"reason":"`+ReasonInvalid+`"`) || !strings.Contains(out, "required") {
		t.Errorf("moved-on with a newer field: %d %s, want 400 %s", code, out, ReasonInvalid)
	}
	// Malformed peer bodies are still refused, clearly.
	for _, bad := range []string{
		`{"home":"a","epoch":"m1","extra":1}`, // a known field of the wrong type
		`{"home":"a","extra":1} {"home":"c"}`, // a second value
		`{"home":"a","extra":`,                // truncated
	} {
		before := counterValue(b.srv.errs.WithLabelValues(ReasonBadJSON))
		code, out := send(t, as(t, a.dir), "POST", in.dir.urls["b"]+"/v1/peer/foreign", "", bad)
		if code != 400 || !strings.Contains(out, "decode request body") {
			t.Errorf("peer body %s: %d %s, want 400 decode request body", bad, code, out)
		}
		if got := counterValue(b.srv.errs.WithLabelValues(ReasonBadJSON)); got != before+1 {
			t.Errorf("peer body %s: bad_json counted %v, want %v", bad, got, before+1)
		}
	}
	// A user's body stays strict: an unknown field is a typo.
	code, out = send(t, anon(), "POST", in.dir.urls["a"]+"/v1/services/web/migrate", "op-a", `{"destinaton":"b"}`)
	if code != 400 || !strings.Contains(out, "unknown field") {
		t.Errorf("user body with an unknown field: %d %s, want 400 unknown field", code, out)
	}
}
