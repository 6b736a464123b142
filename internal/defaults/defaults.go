// Package defaults fills in the fields a configuration leaves unset, one
// line a field: defaults.Positive(&cfg.Timeout, 10*time.Second). A leaf
// package: it imports nothing of roam.
package defaults

// Number is what Positive takes: integers, floats and the types built on
// them (time.Duration).
type Number interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 |
		~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~float32 | ~float64
}

// Positive sets *v to d when *v is not positive: zero (unset) or a
// negative value, which no setting here means.
func Positive[T Number](v *T, d T) {
	var zero T
	if *v <= zero {
		*v = d
	}
}
