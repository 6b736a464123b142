// Package httpjson is the JSON-over-HTTP plumbing roam's APIs share (the
// controller's REST API in ctrl/api, the agent's in dataplane/agentapi, and
// their clients): the error a handler returns and its wire form, a strict
// request decoder and a tolerant one (for peers' messages), the JSON
// reply, a status-recording ResponseWriter, and on the client side a JSON
// request and the reading of an answer. A leaf package: it imports nothing
// of roam, so both a data-plane package and a controller package may use
// it.
package httpjson

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// Error is an API error: its HTTP status and, on the wire,
// {"error": Msg, "reason": Reason}.
type Error struct {
	Status int    `json:"-"`
	Reason string `json:"reason"`
	Msg    string `json:"error"`
}

func (e *Error) Error() string { return e.Msg }

// Errorf returns an *Error with status, reason and a formatted message.
func Errorf(status int, reason, format string, args ...any) *Error {
	return &Error{Status: status, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Reply writes v as JSON with status.
func Reply(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// ReplyList writes xs with status 200, an empty array rather than null
// when there is none; or, when the listing failed (err), returns err and
// writes nothing.
func ReplyList[T any](w http.ResponseWriter, xs []T, err error) error {
	if err != nil {
		return err
	}
	if xs == nil {
		xs = []T{}
	}
	return Reply(w, http.StatusOK, xs)
}

// ErrTrailing is data after the one JSON value a body may hold.
var ErrTrailing = errors.New("trailing data after the JSON value")

// Decode reads exactly one JSON value from r into v, strictly: a field v
// does not have is an error, and so is anything but white space after
// the value (ErrTrailing).
func Decode(r io.Reader, v any) error { return decode(r, v, true) }

// DecodeTolerant reads exactly one JSON value from r into v as Decode
// does, but a field v does not have is skipped rather than an error: the
// decoder of a peer's message, whose sender may be a newer version
// (forward compatibility). A type error, a malformed value and trailing
// data are still errors. unknown names the first field skipped ("" when
// none was), for the caller to count. r is read whole: bound it first.
func DecodeTolerant(r io.Reader, v any) (unknown string, err error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	if err := decode(bytes.NewReader(b), v, false); err != nil {
		return "", err
	}
	// Find what was skipped: the strict decoder names the first unknown
	// field; v's type decodes into a scratch value so v is left as is.
	scratch := reflect.New(reflect.TypeOf(v).Elem()).Interface()
	if err := decode(bytes.NewReader(b), scratch, true); err != nil {
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return strings.Trim(name, `"`), nil
		}
	}
	return "", nil
}

// decode reads exactly one JSON value from r into v; strict refuses a
// field v does not have.
func decode(r io.Reader, v any, strict bool) error {
	dec := json.NewDecoder(r)
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return ErrTrailing
	}
	return nil
}

// StatusWriter is a ResponseWriter that remembers the status written
// (http.StatusOK until one is).
type StatusWriter struct {
	http.ResponseWriter
	Code int
}

// NewStatusWriter wraps w.
func NewStatusWriter(w http.ResponseWriter) *StatusWriter {
	return &StatusWriter{ResponseWriter: w, Code: http.StatusOK}
}

// WriteHeader records code and passes it on.
func (w *StatusWriter) WriteHeader(code int) {
	w.Code = code
	w.ResponseWriter.WriteHeader(code)
}

// NewRequest builds a request to url whose body is in as JSON (no body if
// in is nil), with its Content-Type set.
func NewRequest(ctx context.Context, method, url string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// Answer is what a server answered: its status and at most the limit
// Do was given of its body.
type Answer struct {
	Status int
	Body   []byte
}

// OK reports whether the status is 2xx.
func (a Answer) OK() bool { return a.Status/100 == 2 }

// ErrorBody is the server's error as the answer's body gives it (what of
// an Error's JSON form it holds); ok says the body is that form with a
// message.
func (a Answer) ErrorBody() (e Error, ok bool) {
	err := json.Unmarshal(a.Body, &e)
	return e, err == nil && e.Msg != ""
}

// Do sends req with hc and reads at most limit bytes of the answer.
// The error of the call itself is returned as is; one reading the body
// says so.
func Do(hc *http.Client, req *http.Request, limit int64) (Answer, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return Answer{}, fmt.Errorf("read answer: %w", err)
	}
	return Answer{Status: resp.StatusCode, Body: b}, nil
}
