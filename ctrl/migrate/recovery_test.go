package migrate

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
)

// crashAtPoint stops c's engine at the k-th crash point (0-based) of role
// (a journal write or the crash point after the agents' commit); the
// stage it stopped at is then in *at. k < 0 counts the points (*n) and
// stops nowhere.
func crashAtPoint(c *fakeCluster, role ctrl.Role, k int, n *int, at *ctrl.Stage) {
	var mu sync.Mutex
	i := 0
	c.crash = func(m ctrl.Migration) error {
		if m.Role != role {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		i++
		if k < 0 {
			*n = i
			return nil
		}
		if i-1 == k {
			*at = m.Stage
			return fmt.Errorf("crash at point %d (%s)", k, m.Stage)
		}
		return nil
	}
}

// TestCrashAtEachJournalPointKeepsRedirectMode kills a controller at every
// crash point of a migration (the home's move away, the home's reroute
// after a "moved on", the mover's end) in both redirect modes, restarts it
// on the same store and checks that recovery commits what the
// uninterrupted migration would have: by SRv6, the path ([new], or
// [old, new] on a move between two abroad locations, shortened to [new]
// once the old location says its copy is gone), never a NAT redirect; by
// NAT, redirects and never a path. A mover that restarts after the home
// moved the service takes its copy off the path as its cleanup does
// (draining, gone, return route removed).
func TestCrashAtEachJournalPointKeepsRedirectMode(t *testing.T) {
	type scenario struct {
		name  string
		crash string    // the cluster that crashes
		role  ctrl.Role // its role
	}
	scenarios := []scenario{
		{"home", "a", ctrl.RoleHome},
		{"reroute", "a", ctrl.RoleReroute},
		{"mover", "b", ctrl.RoleMover},
	}
	for _, srv6 := range []bool{false, true} {
		mode := map[bool]string{false: "nat", true: "srv6"}[srv6]
		newW := func(t *testing.T) *world {
			if srv6 {
				return srv6World(t, nil, "a", "b", "c")
			}
			return newWorld(t, "a", "b", "c")
		}
		// want is the home's target for the service running at id, as
		// the record says (by SRv6: the path to id's node).
		want := func(t *testing.T, w *world, id string) lb.Target {
			if id == "a" {
				return lb.Local
			}
			if srv6 {
				return lb.SRv6(testSID(t, int(id[0]-'a')+1))
			}
			return lb.Redirect(netip.AddrPortFrom(w.cluster(id).addr, testPort))
		}
		// run makes the migration of sc (home a -> b; then b -> c for a
		// reroute or a mover), with c's engine stopping at point k.
		run := func(t *testing.T, w *world, sc scenario, k int, n *int, at *ctrl.Stage) error {
			w.deploy("a")
			if sc.role == ctrl.RoleHome {
				crashAtPoint(w.cluster(sc.crash), sc.role, k, n, at)
				_, err := w.migrate("a", "b")
				return err
			}
			w.mustMigrate("a", "b")
			w.reconcile("a")
			crashAtPoint(w.cluster(sc.crash), sc.role, k, n, at)
			_, err := w.migrate("b", "c")
			return err
		}
		for _, sc := range scenarios {
			n := 0
			var at ctrl.Stage
			if err := run(t, newW(t), sc, -1, &n, &at); err != nil {
				t.Fatalf("%s %s uninterrupted: %v", mode, sc.name, err)
			}
			if n == 0 {
				t.Fatalf("%s %s: no crash point", mode, sc.name)
			}
			for k := range n {
				t.Run(fmt.Sprintf("%s/%s/%d", mode, sc.name, k), func(t *testing.T) {
					w := newW(t)
					var at ctrl.Stage
					err := run(t, w, sc, k, new(int), &at)
					if err == nil {
						t.Fatalf("the migration ran through crash point %d", k)
					}
					moved := !at.BeforeCommit()
					if sc.role == ctrl.RoleMover && at == ctrl.StageReroute {
						moved = false // the home was not called yet
					}
					dest := map[bool]string{false: "b", true: "c"}[sc.role != ctrl.RoleHome]
					if !moved {
						dest = map[bool]string{false: "a", true: "b"}[sc.role != ctrl.RoleHome]
					}
					w.acts.take()
					w.restart(sc.crash)
					if sc.crash != "a" {
						w.reconcile("a")
					}
					f := w.frontend("a")
					// What the restarted cluster's recovery (and the
					// reconcilers) staged at the home: of the service's
					// mode only.
					var log []string
					seen := func() []string { // every action since the restart
						log = append(log, w.acts.take()...)
						return log
					}
					checkStaged := func() {
						t.Helper()
						for _, s := range seen() {
							if !strings.HasPrefix(s, "a: agents stage") {
								continue
							}
							if bad := map[bool]string{false: "srv6:", true: "redirect:"}[srv6]; strings.Contains(s, bad) {
								t.Fatalf("crash at %s (point %d), %s service: after the restart the home staged %q", at, k, mode, s)
							}
						}
					}
					checkStaged()
					if srv6 && moved && sc.role == ctrl.RoleReroute {
						// As the commit left it: [b, c] while b's copy
						// drains.
						two := lb.SRv6(testSID(t, 2), testSID(t, 3))
						for i := range 2 {
							if got := w.cluster("a").ag.active(i, f); got != two {
								t.Fatalf("crash at %s: home node %d after recovery: %s, want [b, c] %s", at, i, got, two)
							}
						}
					}
					if sc.crash == "a" && sc.role == ctrl.RoleReroute {
						w.reconcile("b") // the mover settles once the home answers
					}
					if srv6 && moved && sc.role != ctrl.RoleHome {
						// b's copy left the path as its cleanup does it.
						w.eventually("b's copy draining, gone and its return route removed", func() error {
							log := seen()
							for _, s := range []string{
								fmt.Sprintf("srv6 b copies [%s] draining", f),
								fmt.Sprintf("srv6 b copies [%s] gone", f),
								fmt.Sprintf("srv6 b returns [%s] -> %s remove=true", f, testSID(t, 1)),
							} {
								if !slices.Contains(log, s) {
									return errors.New("not yet: " + s)
								}
							}
							return nil
						})
					}
					w.eventually(fmt.Sprintf("served at %s by %s only", dest, mode), func() error {
						for i := range 2 {
							if got, wt := w.cluster("a").ag.active(i, f), want(t, w, dest); got != wt {
								return fmt.Errorf("home node %d: %s, want %s", i, got, wt)
							}
						}
						for _, id := range []string{"a", "b", "c"} {
							if _, runs := w.cluster(id).be.running("web"); runs != (id == dest) {
								return fmt.Errorf("copy at %s runs: %v", id, runs)
							}
						}
						r, err := w.eng("a").Get("web")
						if err != nil {
							return err
						}
						if r.Cluster != dest {
							return fmt.Errorf("home record at %s", r.Cluster)
						}
						return nil
					})
					checkStaged()
				})
			}
		}
	}
}

// settleRolledForward checks that the home a's record says to after a
// migration whose commit failed on some node (rolled forward), then
// settles it (a restart of a, or a reconcile) and returns what a staged
// meanwhile.
func settleRolledForward(t *testing.T, w *world, to string, restart bool) []string {
	t.Helper()
	if r := w.mustRecord("a"); r.Cluster != to {
		t.Fatalf("home record after the failed commit at %s, want %s (rolled forward)", r.Cluster, to)
	}
	w.acts.take()
	if restart {
		w.restart("a")
	} else {
		w.reconcile("a")
	}
	return w.acts.take("a: agents stage")
}

// TestCommitFailedRollsForwardInMode: a commit that fails on one node is
// rolled forward (the record already says where the service went, the
// journal stays at the commit); the reconcile that settles it, and one
// after a restart, commit every node again in the service's mode: by
// SRv6 the path [b], by NAT the redirect, nothing else staged.
func TestCommitFailedRollsForwardInMode(t *testing.T) {
	for _, srv6 := range []bool{false, true} {
		for _, restart := range []bool{false, true} {
			t.Run(fmt.Sprintf("srv6=%v/restart=%v", srv6, restart), func(t *testing.T) {
				var w *world
				want := lb.SRv6(testSID(t, 2))
				bad := "redirect:"
				if srv6 {
					w = srv6World(t, nil, "a", "b")
				} else {
					w = newWorld(t, "a", "b")
					want, bad = lb.Redirect(netip.AddrPortFrom(w.cluster("b").addr, testPort)), "srv6:"
				}
				w.deploy("a")
				a := w.cluster("a")
				a.ag.faults.set("commit node1", fault{err: errInjected, times: 1})
				if m, err := w.migrate("a", "b"); !errors.Is(err, ErrUnsettled) || m.State != ctrl.StateRunning {
					t.Fatalf("migration with a failed commit: %+v, %v: want unsettled", m, err)
				}
				for _, s := range settleRolledForward(t, w, "b", restart) {
					if strings.Contains(s, bad) {
						t.Fatalf("settling the rolled-forward migration staged %q", s)
					}
				}
				for i := range 2 {
					if got := a.ag.active(i, w.frontend("a")); got != want {
						t.Fatalf("home node %d: %s, want %s", i, got, want)
					}
				}
				ms, _ := w.eng("a").Migrations()
				if last := ms[len(ms)-1]; last.State != ctrl.StateDone {
					t.Fatalf("rolled-forward migration %+v, want done", last)
				}
			})
		}
	}
}

// TestCommitFailedBetweenAbroadKeepsOldOnPath: a move on by SRv6 between
// two abroad locations (b -> c, the home a reroutes) whose commit fails
// on one node is rolled forward (the record already says c); the
// reconcile that settles it, and one after a restart, commit the path
// the uninterrupted move would have, [b, c] (b's copy still holds its
// flows), on every node, not [c]; once b's copy is gone, [c].
func TestCommitFailedBetweenAbroadKeepsOldOnPath(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			w := srv6World(t, nil, "a", "b", "c")
			w.deploy("a")
			w.mustMigrate("a", "b")
			w.reconcile("a")
			a, f := w.cluster("a"), w.frontend("a")
			a.ag.faults.set("commit node1", fault{err: errInjected, times: 1})
			if _, err := w.migrate("b", "c"); err == nil {
				t.Fatal("move on with a failed commit at the home: no error")
			}
			staged := settleRolledForward(t, w, "c", restart)
			two := lb.SRv6(testSID(t, 2), testSID(t, 3))
			for i := range 2 {
				if got := a.ag.active(i, f); got != two {
					t.Fatalf("home node %d after settling: %s, want [b, c] %s (staged: %q)", i, got, two, staged)
				}
			}
			w.reconcile("b") // the mover settles once the home answers
			one := lb.SRv6(testSID(t, 3))
			w.eventually("[c] on every home node once b's copy is gone", func() error {
				for i := range 2 {
					if got := a.ag.active(i, f); got != one {
						return fmt.Errorf("home node %d: %s, want %s", i, got, one)
					}
				}
				if _, runs := w.cluster("b").be.running("web"); runs {
					return errors.New("b's copy still runs")
				}
				return nil
			})
			ms, _ := w.eng("a").Migrations()
			if last := ms[len(ms)-1]; last.State != ctrl.StateDone || last.FromSID != testSID(t, 2) {
				t.Fatalf("home's migration %+v, want done, from_sid %s", last, testSID(t, 2))
			}
		})
	}
}
