// Package store persists a controller's records (local, abroad and foreign
// resources), its migration journal and the orphan copies it must still
// remove, in one bbolt file, so a restarted controller loses nothing. The
// file also holds its incarnation: a random id made when the file is
// created, so peers can tell a controller that lost its store (a reinstall)
// from the one they talked to.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/roamnet/roam/ctrl"
)

// ErrNotFound is returned (wrapped) for a missing record.
var ErrNotFound = errors.New("not found")

var (
	bRecords    = []byte("records")
	bMigrations = []byte("migrations")
	bOrphans    = []byte("orphans")
	bMeta       = []byte("meta")
	kIncarn     = []byte("incarnation")
)

// Store is a bbolt file. Safe for concurrent use.
type Store struct {
	db          *bolt.DB
	incarnation string
}

// Open opens (creating) the store at path.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w (is another controller using it?)", path, err)
	}
	s := &Store{db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bRecords, bMigrations, bOrphans, bMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		if v := meta.Get(kIncarn); len(v) > 0 {
			s.incarnation = string(v)
			return nil
		}
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("make incarnation: %w", err)
		}
		s.incarnation = hex.EncodeToString(b)
		return meta.Put(kIncarn, []byte(s.incarnation))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}

// Incarnation is the store's random id, made when its file was created and
// kept for its life.
func (s *Store) Incarnation() string { return s.incarnation }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

func put(s *Store, bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) }); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucket, key, err)
	}
	return nil
}

func get(s *Store, bucket []byte, key string, v any) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket).Get([]byte(key))
		if b == nil {
			return fmt.Errorf("read %s/%s: %w", bucket, key, ErrNotFound)
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("decode %s/%s: %w", bucket, key, err)
		}
		return nil
	})
}

func del(s *Store, bucket []byte, key string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) }); err != nil {
		return fmt.Errorf("delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

func list[T any](s *Store, bucket []byte) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, b []byte) error {
			var v T
			if err := json.Unmarshal(b, &v); err != nil {
				return fmt.Errorf("decode %s/%s: %w", bucket, k, err)
			}
			out = append(out, v)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", bucket, err)
	}
	return out, nil
}

// PutRecord writes r under its service name.
func (s *Store) PutRecord(r ctrl.Record) error {
	r.Updated = time.Now().UTC()
	return put(s, bRecords, r.Service.Name, r)
}

// Record reads one record.
func (s *Store) Record(name string) (ctrl.Record, error) {
	var r ctrl.Record
	err := get(s, bRecords, name, &r)
	return r, err
}

// DeleteRecord removes a record (missing is fine).
func (s *Store) DeleteRecord(name string) error { return del(s, bRecords, name) }

// Records lists every record, by name.
func (s *Store) Records() ([]ctrl.Record, error) { return list[ctrl.Record](s, bRecords) }

// PutMigration journals m (written before each step).
func (s *Store) PutMigration(m ctrl.Migration) error { return put(s, bMigrations, m.ID, m) }

// Migration reads one migration.
func (s *Store) Migration(id string) (ctrl.Migration, error) {
	var m ctrl.Migration
	err := get(s, bMigrations, id, &m)
	return m, err
}

// Migrations lists every journalled migration, oldest first.
func (s *Store) Migrations() ([]ctrl.Migration, error) {
	ms, err := list[ctrl.Migration](s, bMigrations)
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Started.Before(ms[j].Started) })
	return ms, err
}

// InFlight lists migrations still running (to finish or roll back after a
// restart).
func (s *Store) InFlight() ([]ctrl.Migration, error) {
	ms, err := s.Migrations()
	if err != nil {
		return nil, err
	}
	var out []ctrl.Migration
	for _, m := range ms {
		if m.State == ctrl.StateRunning {
			out = append(out, m)
		}
	}
	return out, nil
}

func orphanKey(o ctrl.Orphan) string { return o.Cluster + "/" + o.Service }

// PutOrphan remembers a copy to remove at another cluster.
func (s *Store) PutOrphan(o ctrl.Orphan) error { return put(s, bOrphans, orphanKey(o), o) }

// DeleteOrphan forgets it once removed.
func (s *Store) DeleteOrphan(o ctrl.Orphan) error { return del(s, bOrphans, orphanKey(o)) }

// Orphans lists copies still to remove.
func (s *Store) Orphans() ([]ctrl.Orphan, error) { return list[ctrl.Orphan](s, bOrphans) }
