package agentapi

import (
	"errors"
	"net/http"

	"github.com/roamnet/roam/dataplane"
)

// classify maps an error of the data plane to an HTTP status and a reason,
// by the sentinel it wraps: an unknown frontend is 404, a generation that is
// not in the state the call needs (stale, aborted, nothing staged) is 409, a
// target the frontend cannot take is 400, anything else is 500.
func classify(err error) (int, string) {
	if errors.Is(err, dataplane.ErrNotFound) {
		return http.StatusNotFound, ReasonNotFound
	}
	if errors.Is(err, dataplane.ErrGeneration) {
		return http.StatusConflict, ReasonConflict
	}
	if errors.Is(err, dataplane.ErrBadTarget) {
		return http.StatusBadRequest, ReasonBadTarget
	}
	return http.StatusInternalServerError, ReasonInternal
}
