//go:build k8s

package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/internal/tick"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
)

// Which overlay each cluster is installed with.
var overlayOf = map[string]string{"a": "all-in-one", "b": "member"}

const (
	ctrlSA     = "system:serviceaccount:roam-system:roam-ctrl"
	agentSA    = "system:serviceaccount:roam-system:roam-agent"
	servicesNS = "roam-services"
)

func repoRoot() string { return filepath.Join("..", "..") }

func overlayDir(name string) string {
	d, _ := filepath.Abs(filepath.Join(repoRoot(), "deploy", "overlays", name))
	return d
}

// render is `kubectl kustomize dir` with the built kubectl, decoded.
func render(ctx context.Context, cp *ControlPlane, dir string) ([]byte, []*unstructured.Unstructured, error) {
	out, err := kubectl(ctx, cp, nil, "kustomize", dir)
	if err != nil {
		return nil, nil, err
	}
	var objs []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, nil, fmt.Errorf("decode rendered %s: %w", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return []byte(out), objs, nil
}

// apply renders dir, provisions a volume for each claim (as a cluster
// admin without a dynamic provisioner would), applies everything server
// side and checks every object is there.
func apply(ctx context.Context, cp *ControlPlane, dir string) ([]*unstructured.Unstructured, error) {
	raw, objs, err := render(ctx, cp, dir)
	if err != nil {
		return nil, err
	}
	for _, u := range objs {
		if u.GetKind() == "PersistentVolumeClaim" {
			if err := provisionVolume(ctx, cp.Admin, u); err != nil {
				return nil, err
			}
		}
	}
	if _, err := kubectl(ctx, cp, raw, "apply", "--server-side", "--field-manager=roam-test", "-f", "-"); err != nil {
		return nil, err
	}
	got, err := kubectl(ctx, cp, raw, "get", "-f", "-", "-o", "name")
	if err != nil {
		return nil, err
	}
	if n := len(strings.Fields(got)); n != len(objs) {
		return nil, fmt.Errorf("%d objects rendered, %d found after apply:\n%s", len(objs), n, got)
	}
	return objs, nil
}

func provisionVolume(ctx context.Context, cs kubernetes.Interface, pvc *unstructured.Unstructured) error {
	name := "roam-test-" + pvc.GetNamespace() + "-" + pvc.GetName()
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/" + name}},
			ClaimRef:                      &corev1.ObjectReference{Namespace: pvc.GetNamespace(), Name: pvc.GetName()},
		},
	}
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("provision volume for %s/%s: %w", pvc.GetNamespace(), pvc.GetName(), err)
	}
	return nil
}

var (
	installMu   sync.Mutex
	installOnce = map[string]*installState{}
)

type installState struct {
	once sync.Once
	objs []*unstructured.Unstructured
	err  error
}

// installed applies the cluster's overlay once (whichever test needs it
// first) and fails t if that did not work.
func installed(t *testing.T, name string) []*unstructured.Unstructured {
	t.Helper()
	installMu.Lock()
	st := installOnce[name]
	if st == nil {
		st = &installState{}
		installOnce[name] = st
	}
	installMu.Unlock()
	st.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		st.objs, st.err = apply(ctx, clusters[name], overlayDir(overlayOf[name]))
		if st.err == nil {
			st.err = settle(ctx, clusters[name], st.objs)
		}
	})
	if st.err != nil {
		t.Fatalf("install %s on cluster %s: %v", overlayOf[name], name, st.err)
	}
	return st.objs
}

// TestOverlaysAdmitted applies every overlay to a real apiserver (its
// validation, defaulting, PodSecurity, priority and RBAC escalation checks)
// and waits for what real controllers make of them: the agent DaemonSet on
// every kwok node and the Deployments Available.
func TestOverlaysAdmitted(t *testing.T) {
	for _, c := range []struct{ cluster, overlay string }{
		{"a", "all-in-one"},
		{"b", "member"},
		// The scaled MO applied over a member: the same cluster moving to
		// roam-meta on an external NATS.
		{"b", "scaled"},
	} {
		t.Run(c.overlay, func(t *testing.T) {
			cp := clusters[c.cluster]
			ctx := testCtx(t, 3*time.Minute)
			var objs []*unstructured.Unstructured
			if c.overlay == overlayOf[c.cluster] {
				objs = installed(t, c.cluster)
			} else {
				installed(t, c.cluster)
				var err error
				if objs, err = apply(ctx, cp, overlayDir(c.overlay)); err != nil {
					t.Fatal(err)
				}
			}
			kinds := map[string]int{}
			for _, u := range objs {
				kinds[u.GetKind()]++
			}
			t.Logf("%s on %s: %d objects admitted %v", c.overlay, c.cluster, len(objs), kinds)
			if err := settle(ctx, cp, objs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// settle waits for what the real controllers make of objs: the agent
// DaemonSet Ready on every node, every Deployment Available and updated.
func settle(ctx context.Context, cp *ControlPlane, objs []*unstructured.Unstructured) error {
	if err := tick.Until(ctx, 90*time.Second, 100*time.Millisecond, func() error { _, err := readyAgents(ctx, cp); return err }); err != nil {
		return err
	}
	for _, u := range objs {
		if u.GetKind() != "Deployment" {
			continue
		}
		if err := tick.Until(ctx, 90*time.Second, 100*time.Millisecond, func() error {
			d, err := cp.Admin.AppsV1().Deployments(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.Status.ObservedGeneration < d.Generation || d.Status.AvailableReplicas != *d.Spec.Replicas || d.Status.UpdatedReplicas != *d.Spec.Replicas || d.Status.Replicas != *d.Spec.Replicas {
				return fmt.Errorf("deployment %s/%s: %d of %d available, %d updated, %d in all; %s", d.Namespace, d.Name,
					d.Status.AvailableReplicas, *d.Spec.Replicas, d.Status.UpdatedReplicas, d.Status.Replicas, podTrouble(ctx, cp, d.Namespace))
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// podTrouble says why pods of ns are not running (events of the scheduler
// and the controllers), for failure messages.
func podTrouble(ctx context.Context, cp *ControlPlane, ns string) string {
	ev, err := cp.Admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range ev.Items {
		if e.Type == corev1.EventTypeWarning {
			out = append(out, fmt.Sprintf("%s %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message))
		}
	}
	return "warnings: " + strings.Join(out, "; ")
}

// readyAgents returns the agent pods by node once the DaemonSet runs one
// Ready pod on every node.
func readyAgents(ctx context.Context, cp *ControlPlane) (map[string]corev1.Pod, error) {
	ds, err := cp.Admin.AppsV1().DaemonSets("roam-system").Get(ctx, "roam-agent", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if err := dsDone(ds, len(cp.NodeNames)); err != nil {
		return nil, fmt.Errorf("%w; %s", err, podTrouble(ctx, cp, "roam-system"))
	}
	byNode, err := agentPods(ctx, cp)
	if err != nil {
		return nil, err
	}
	for _, n := range cp.NodeNames {
		p, ok := byNode[n]
		if !ok || !podReady(&p) {
			return nil, fmt.Errorf("no ready agent pod on node %s", n)
		}
	}
	return byNode, nil
}

func dsDone(ds *appsv1.DaemonSet, nodes int) error {
	s := ds.Status
	if s.ObservedGeneration < ds.Generation || int(s.DesiredNumberScheduled) != nodes || int(s.NumberReady) != nodes ||
		int(s.UpdatedNumberScheduled) != nodes || int(s.NumberAvailable) != nodes || s.NumberMisscheduled != 0 {
		return fmt.Errorf("daemonset %s: generation %d/%d, desired %d (nodes %d), ready %d, updated %d, available %d",
			ds.Name, s.ObservedGeneration, ds.Generation, s.DesiredNumberScheduled, nodes, s.NumberReady, s.UpdatedNumberScheduled, s.NumberAvailable)
	}
	return nil
}

func agentPods(ctx context.Context, cp *ControlPlane) (map[string]corev1.Pod, error) {
	pods, err := cp.Admin.CoreV1().Pods("roam-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=roam-agent"})
	if err != nil {
		return nil, err
	}
	byNode := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if _, dup := byNode[p.Spec.NodeName]; dup {
			return nil, fmt.Errorf("two agent pods on node %s", p.Spec.NodeName)
		}
		byNode[p.Spec.NodeName] = p
	}
	return byNode, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestAgentRollingUpdate applies the overlay again with another image tag
// and follows the real DaemonSet controller replacing the agent on every
// node, at most maxUnavailable (1) node without a ready agent at a time.
func TestAgentRollingUpdate(t *testing.T) {
	cp := clusters["a"]
	installed(t, "a")
	ctx := testCtx(t, 3*time.Minute)
	before, err := readyAgents(ctx, cp)
	if err != nil {
		t.Fatal(err)
	}

	// An overlay of the overlay that only changes the image tag, as a
	// release would.
	dir := t.TempDir()
	const tag = "rollout-test"
	// kustomize takes only relative resource paths.
	relOverlay, err := filepath.Rel(dir, overlayDir(overlayOf["a"]))
	if err != nil {
		t.Fatal(err)
	}
	kust := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: ghcr.io/roamnet/roam
    newTag: %s
`, relOverlay, tag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := apply(ctx, cp, dir); err != nil {
		t.Fatal(err)
	}
	ds, err := cp.Admin.AppsV1().DaemonSets("roam-system").Get(ctx, "roam-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	maxUnavail := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue()
	worst := 0
	var after map[string]corev1.Pod
	err = tick.Until(ctx, 2*time.Minute, 100*time.Millisecond, func() error {
		ds, err := cp.Admin.AppsV1().DaemonSets("roam-system").Get(ctx, "roam-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		worst = max(worst, int(ds.Status.DesiredNumberScheduled-ds.Status.NumberAvailable))
		if err := dsDone(ds, len(cp.NodeNames)); err != nil {
			return err
		}
		if after, err = agentPods(ctx, cp); err != nil {
			return err
		}
		for _, n := range cp.NodeNames {
			p, ok := after[n]
			if !ok || !podReady(&p) || !strings.HasSuffix(p.Spec.Containers[0].Image, ":"+tag) {
				return fmt.Errorf("node %s: agent not yet replaced by a ready %s pod", n, tag)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for n, p := range after {
		if before[n].UID == p.UID {
			t.Fatalf("node %s kept its agent pod %s", n, p.Name)
		}
	}
	if worst > maxUnavail {
		t.Fatalf("up to %d agents unavailable during the rollout, maxUnavailable is %d", worst, maxUnavail)
	}
	t.Logf("agent rolled to :%s on %d nodes, at most %d unavailable at once (maxUnavailable %d)", tag, len(after), worst, maxUnavail)
}

// TestRBACBinds asks the apiserver's authorizer whether roam-ctrl's
// ServiceAccount holds every grant of the rendered Role and ClusterRole
// (so the bindings point at the right subjects), and nothing else that
// matters; the agent's ServiceAccount holds nothing. Then a token of the
// ServiceAccount authenticates as it.
func TestRBACBinds(t *testing.T) {
	for _, name := range []string{"a", "b"} {
		t.Run(name, func(t *testing.T) {
			cp := clusters[name]
			objs := installed(t, name)
			ctx := testCtx(t, time.Minute)
			checked := 0
			for _, u := range objs {
				var rules []rbacv1.PolicyRule
				ns := ""
				switch u.GetKind() {
				case "Role":
					var r rbacv1.Role
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r); err != nil {
						t.Fatal(err)
					}
					rules, ns = r.Rules, r.Namespace
				case "ClusterRole":
					var r rbacv1.ClusterRole
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r); err != nil {
						t.Fatal(err)
					}
					rules = r.Rules
				default:
					continue
				}
				for _, r := range rules {
					for _, g := range r.APIGroups {
						for _, res := range r.Resources {
							for _, v := range r.Verbs {
								if !allowed(t, ctx, cp, ctrlSA, ns, g, res, v) {
									t.Errorf("%s %s: %s is not allowed to %s %s.%s in %q", u.GetKind(), u.GetName(), ctrlSA, v, res, g, ns)
								}
								checked++
							}
						}
					}
				}
			}
			if checked == 0 {
				t.Fatal("no RBAC rule rendered")
			}
			for _, deny := range []struct{ who, ns, group, res, verb string }{
				{ctrlSA, "roam-system", "", "secrets", "get"},
				{ctrlSA, servicesNS, "", "secrets", "list"},
				{ctrlSA, "default", "apps", "deployments", "create"},
				{ctrlSA, "", "apps", "deployments", "list"},
				{ctrlSA, servicesNS, "apps", "deployments", "patch"},
				{ctrlSA, servicesNS, "", "pods", "delete"},
				{ctrlSA, "", "", "nodes", "update"},
				{agentSA, "", "", "nodes", "list"},
				{agentSA, "", "", "pods", "list"},
			} {
				if allowed(t, ctx, cp, deny.who, deny.ns, deny.group, deny.res, deny.verb) {
					t.Errorf("%s may %s %s.%s in %q: more than the backend needs", deny.who, deny.verb, deny.res, deny.group, deny.ns)
				}
			}
			tok, err := cp.ServiceAccountToken(ctx, "roam-system", "roam-ctrl")
			if err != nil {
				t.Fatal(err)
			}
			cs, err := kubernetes.NewForConfig(cp.Config(tok))
			if err != nil {
				t.Fatal(err)
			}
			who, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if who.Status.UserInfo.Username != ctrlSA {
				t.Fatalf("token authenticates as %q, want %q", who.Status.UserInfo.Username, ctrlSA)
			}
			t.Logf("cluster %s: %d grants bound to %s, denials hold", name, checked, ctrlSA)
		})
	}
}

func allowed(t *testing.T, ctx context.Context, cp *ControlPlane, user, ns, group, res, verb string) bool {
	t.Helper()
	saNS := strings.Split(user, ":")[2]
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:               user,
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: res},
	}}
	got, err := cp.Admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got.Status.Allowed
}
