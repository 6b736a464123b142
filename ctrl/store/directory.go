package store

import (
	"errors"
	"net/netip"
	"time"
)

// kDirectory is the key, in the meta bucket, of the last directory the
// controller saw synced with the MO's view.
var kDirectory = []byte("directory")

// DirectoryEntry is one cluster of a saved directory: what a controller
// needs to recognise and call it.
type DirectoryEntry struct {
	ClusterID     string       `json:"cluster_id"`
	ControllerURL string       `json:"controller_url"`
	DataAddrs     []netip.Addr `json:"data_addrs,omitempty"`
}

// Directory is the peer directory as it was when Saved.
type Directory struct {
	Saved    time.Time        `json:"saved"`
	Clusters []DirectoryEntry `json:"clusters"`
}

// PutDirectory replaces the saved directory.
func (s *Store) PutDirectory(d Directory) error { return put(s, bMeta, string(kDirectory), d) }

// Directory is the saved directory; ok is false when none was ever saved.
func (s *Store) Directory() (d Directory, ok bool, err error) {
	err = get(s, bMeta, string(kDirectory), &d)
	if errors.Is(err, ErrNotFound) {
		return Directory{}, false, nil
	}
	return d, err == nil, err
}
