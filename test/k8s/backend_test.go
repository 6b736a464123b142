//go:build k8s

package k8s

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/kube"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/tick"
)

// ctrlClient is a client with the credentials roam-ctrl's pod would hold:
// a token of the roam-ctrl ServiceAccount deploy/ creates, not an admin's.
func ctrlClient(t *testing.T, name string) kubernetes.Interface {
	t.Helper()
	installed(t, name)
	cp := clusters[name]
	tok, err := cp.ServiceAccountToken(testCtx(t, time.Minute), "roam-system", "roam-ctrl")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cp.Config(tok))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// ctrlBackend is roam-ctrl's Kubernetes backend as deploy/ configures it
// (namespace roam-services, NodePort), on cluster name.
func ctrlBackend(t *testing.T, name string) *kube.Backend {
	t.Helper()
	be, err := kube.New(ctrlClient(t, name), kube.Config{Namespace: servicesNS, ClusterID: name, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// nodeAddr is the InternalIP of a node.
func nodeAddr(ctx context.Context, cp *ControlPlane, node string) (netip.Addr, error) {
	n, err := cp.Admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return netip.ParseAddr(a.Address)
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s has no InternalIP", node)
}

// expectedEndpoints derives, as an admin and independently of the backend,
// where a copy is reached: the node of a ready endpoint in the Service's
// EndpointSlices (kept by the real EndpointSlice controller) and the node
// ports the apiserver allocated.
func expectedEndpoints(ctx context.Context, cp *ControlPlane, name string) ([]netip.AddrPort, error) {
	svc, err := cp.Admin.CoreV1().Services(servicesNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	sl, err := cp.Admin.DiscoveryV1().EndpointSlices(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
	if err != nil {
		return nil, err
	}
	var node string
	for _, s := range sl.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready && e.NodeName != nil && *e.NodeName > node {
				node = *e.NodeName
			}
		}
	}
	if node == "" {
		return nil, fmt.Errorf("no ready endpoint in the EndpointSlices of %s", name)
	}
	addr, err := nodeAddr(ctx, cp, node)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, p := range svc.Spec.Ports {
		if p.NodePort == 0 {
			return nil, fmt.Errorf("service %s port %d: no node port", name, p.Port)
		}
		out = append(out, netip.AddrPortFrom(addr, uint16(p.NodePort)))
	}
	return out, nil
}

// usage is what the scheduler has charged, counted by an admin: requests of
// the pods bound to a node and not finished.
func usage(ctx context.Context, cp *ControlPlane) (milliCPU, memMB, pods int64, err error) {
	pl, err := cp.Admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	for _, p := range pl.Items {
		if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, c := range p.Spec.Containers {
			milliCPU += c.Resources.Requests.Cpu().MilliValue()
			memMB += c.Resources.Requests.Memory().Value() >> 20
		}
		pods++
	}
	return milliCPU, memMB, pods, nil
}

// settledCapacity waits until the backend's view and the admin's count of
// the same moment agree (pods come and go while controllers work).
func settledCapacity(t *testing.T, ctx context.Context, cp *ControlPlane, be *kube.Backend) backend.Capacity {
	t.Helper()
	var c backend.Capacity
	if err := tick.Until(ctx, time.Minute, 100*time.Millisecond, func() error {
		cpu, mem, pods, err := usage(ctx, cp)
		if err != nil {
			return err
		}
		if c, err = be.Capacity(ctx); err != nil {
			return err
		}
		if c.UsedMilliCPU != cpu || c.UsedMemoryMB != mem || c.UsedPods != pods {
			return fmt.Errorf("backend says used %dm/%dMB/%d pods, the apiserver holds %dm/%dMB/%d", c.UsedMilliCPU, c.UsedMemoryMB, c.UsedPods, cpu, mem, pods)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

func webSpec(image string) backend.Spec {
	return backend.Spec{
		Name: "web", Home: "a", Epoch: 1, Image: image,
		Ports:     []backend.Port{{Port: 8080, Protocol: lb.TCP}, {Name: "dns", Port: 5353, Protocol: lb.UDP}},
		Resources: backend.Resources{MilliCPU: 250, MemoryMB: 128},
	}
}

// TestBackendLifecycle runs the kube backend as roam-ctrl (its
// ServiceAccount, so RBAC is enforced) against cluster a: capacity from node
// allocatable, deploy with readiness from the real EndpointSlices, a
// repeated deploy that changes nothing, a new fence (an update of the
// labels, no rollout, same node ports), another workload under the name
// refused, list, delete and the pods' garbage collection.
func TestBackendLifecycle(t *testing.T) {
	cp := clusters["a"]
	be := ctrlBackend(t, "a")
	ctx := testCtx(t, 4*time.Minute)
	t.Cleanup(func() { _ = be.Delete(context.Background(), "web") })

	c0 := settledCapacity(t, ctx, cp, be)
	n := int64(len(cp.NodeNames))
	if c0.MilliCPU != n*4000 || c0.MemoryMB != n*8192 || c0.Pods != n*110 {
		t.Fatalf("capacity %+v, want the allocatable of %d nodes (4 CPU, 8Gi, 110 pods each)", c0, n)
	}

	spec := webSpec("registry.example/web:1")
	start := time.Now()
	inst, err := be.Deploy(ctx, spec)
	if err != nil {
		t.Fatalf("deploy: %v; %s", err, podTrouble(ctx, cp, servicesNS))
	}
	t.Logf("deployed in %s: %+v", time.Since(start).Round(time.Millisecond), inst)
	want, err := expectedEndpoints(ctx, cp, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !inst.Ready || fmt.Sprint(inst.Endpoints) != fmt.Sprint(want) || inst.Home != "a" || inst.Epoch != 1 {
		t.Fatalf("instance %+v, want ready at %v, home a, epoch 1", inst, want)
	}
	d, err := cp.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels[kube.LabelManagedBy] != "roam" || d.Annotations[kube.AnnotationHome] != "a" || d.Spec.Template.Spec.Containers[0].Image != spec.Image {
		t.Fatalf("deployment as stored: labels %v annotations %v image %s", d.Labels, d.Annotations, d.Spec.Template.Spec.Containers[0].Image)
	}
	c1 := settledCapacity(t, ctx, cp, be)
	if c1.UsedMilliCPU-c0.UsedMilliCPU != 250 || c1.UsedMemoryMB-c0.UsedMemoryMB != 128 || c1.UsedPods-c0.UsedPods != 1 {
		t.Fatalf("capacity used went %+v -> %+v, want +250m, +128MB, +1 pod", c0, c1)
	}

	// The same spec again: nothing changes (no new generation).
	if _, err := be.Deploy(ctx, spec); err != nil {
		t.Fatal(err)
	}
	d2, _ := cp.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	if d2.Generation != d.Generation {
		t.Fatalf("a repeated deploy of the same spec changed the deployment: generation %d -> %d", d.Generation, d2.Generation)
	}

	pods0, err := cp.Admin.CoreV1().Pods(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelService + "=web"})
	if err != nil || len(pods0.Items) != 1 {
		t.Fatalf("pods of web: %v, %v", pods0, err)
	}

	// A new fence (a migration brought the copy here, same workload): the
	// Deployment and Service are relabelled (update), nothing rolls, the
	// node ports stay (other clusters' data planes point at them).
	svc, _ := cp.Admin.CoreV1().Services(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	spec3 := spec
	spec3.MigrationID, spec3.Epoch = "m-1", 2
	inst3, err := be.Deploy(ctx, spec3)
	if err != nil {
		t.Fatal(err)
	}
	d3, _ := cp.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	svc3, _ := cp.Admin.CoreV1().Services(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	if inst3.MigrationID != "m-1" || inst3.Epoch != 2 || d3.Annotations[kube.AnnotationMigration] != "m-1" ||
		d3.Annotations[kube.AnnotationEpoch] != "2" || svc3.Annotations[kube.AnnotationMigration] != "m-1" {
		t.Fatalf("fence not recorded: instance %+v, deployment annotations %v, service annotations %v", inst3, d3.Annotations, svc3.Annotations)
	}
	// The relabel changes the Deployment's annotations, which bumps its
	// generation by design (the apiserver's deployment strategy: annotations
	// are copied to its ReplicaSets); a rollout is a new pod template, hence
	// a new ReplicaSet.
	if !apiequality.Semantic.DeepEqual(d3.Spec.Template, d.Spec.Template) {
		t.Fatalf("a relabel changed the pod template (a rollout): %+v -> %+v", d.Spec.Template, d3.Spec.Template)
	}
	if rss, err := cp.Admin.AppsV1().ReplicaSets(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelService + "=web"}); err != nil || len(rss.Items) != 1 {
		t.Fatalf("replica sets of web after a relabel: %v, %v: want the one from before", rss, err)
	}
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].NodePort != svc3.Spec.Ports[i].NodePort {
			t.Fatalf("node port %d moved: %d -> %d", i, svc.Spec.Ports[i].NodePort, svc3.Spec.Ports[i].NodePort)
		}
	}
	pods3, err := cp.Admin.CoreV1().Pods(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelService + "=web"})
	if err != nil || len(pods3.Items) != 1 || pods3.Items[0].UID != pods0.Items[0].UID {
		t.Fatalf("the relabel replaced the pod: %v", err)
	}

	// Another workload under the same name is refused, and changes nothing.
	if _, err := be.Deploy(ctx, webSpec("registry.example/web:2")); err == nil || !strings.Contains(err.Error(), "different spec") {
		t.Fatalf("deploy of another image under the same name: %v", err)
	}
	d4, _ := cp.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "web", metav1.GetOptions{})
	if d4.Generation != d3.Generation || d4.Spec.Template.Spec.Containers[0].Image != spec.Image {
		t.Fatalf("a refused deploy changed the deployment: generation %d, image %s", d4.Generation, d4.Spec.Template.Spec.Containers[0].Image)
	}

	list, err := be.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "web" {
		t.Fatalf("list: %+v, %v", list, err)
	}

	// Delete: Service and Deployment go, and the real garbage collector
	// removes the ReplicaSets and the pod; the EndpointSlice goes with the
	// Service.
	if err := be.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Get(ctx, "web"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := tick.Until(ctx, time.Minute, 100*time.Millisecond, func() error {
		rs, err := cp.Admin.AppsV1().ReplicaSets(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelService + "=web"})
		if err != nil {
			return err
		}
		pods, err := cp.Admin.CoreV1().Pods(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelService + "=web"})
		if err != nil {
			return err
		}
		sl, err := cp.Admin.DiscoveryV1().EndpointSlices(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return err
		}
		if len(rs.Items)+len(pods.Items)+len(sl.Items) > 0 {
			return fmt.Errorf("after delete: %d replicasets, %d pods, %d endpointslices left", len(rs.Items), len(pods.Items), len(sl.Items))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := be.Delete(ctx, "web"); err != nil {
		t.Fatalf("delete of a missing service: %v", err)
	}
	c2 := settledCapacity(t, ctx, cp, be)
	if c2.UsedPods != c0.UsedPods || c2.UsedMilliCPU != c0.UsedMilliCPU {
		t.Fatalf("capacity after delete %+v, before deploy %+v", c2, c0)
	}
}

// TestBackendOwnership: what roam did not make, roam does not touch. A
// Deployment and a Service of the same name made by someone else: Deploy
// refuses, Get does not see it, Delete refuses, List skips it, and both are
// left as they were.
func TestBackendOwnership(t *testing.T) {
	cp := clusters["a"]
	be := ctrlBackend(t, "a")
	ctx := testCtx(t, 2*time.Minute)
	one := int32(1)
	lbl := map[string]string{"app": "theirs"}
	theirs := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: servicesNS, Labels: lbl},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/theirs:1"}}}}},
	}
	if _, err := cp.Admin.AppsV1().Deployments(servicesNS).Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: servicesNS},
		Spec: corev1.ServiceSpec{Selector: lbl, Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := cp.Admin.CoreV1().Services(servicesNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = cp.Admin.AppsV1().Deployments(servicesNS).Delete(ctx, "theirs", metav1.DeleteOptions{})
		_ = cp.Admin.CoreV1().Services(servicesNS).Delete(ctx, "theirs", metav1.DeleteOptions{})
	})
	spec := webSpec("registry.example/web:1")
	spec.Name = "theirs"
	if _, err := be.Deploy(ctx, spec); err == nil || !strings.Contains(err.Error(), "not managed by roam") {
		t.Fatalf("deploy over someone else's deployment: %v", err)
	}
	if _, err := be.Get(ctx, "theirs"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get of someone else's deployment: %v", err)
	}
	if err := be.Delete(ctx, "theirs"); err == nil || !strings.Contains(err.Error(), "not managed by roam") {
		t.Fatalf("delete of someone else's service: %v", err)
	}
	if list, err := be.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	d, err := cp.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "theirs", metav1.GetOptions{})
	if err != nil || d.Generation != 1 || d.Spec.Template.Spec.Containers[0].Image != "registry.example/theirs:1" {
		t.Fatalf("someone else's deployment changed: %v", err)
	}
	if _, err := cp.Admin.CoreV1().Services(servicesNS).Get(ctx, "theirs", metav1.GetOptions{}); err != nil {
		t.Fatalf("someone else's service: %v", err)
	}
}

// TestBackendRBACLimits: the ServiceAccount's credentials reach only what
// the backend needs — the real authorizer refuses the rest.
func TestBackendRBACLimits(t *testing.T) {
	cs := ctrlClient(t, "a")
	ctx := testCtx(t, time.Minute)
	if _, err := cs.CoreV1().Secrets("roam-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list secrets as roam-ctrl: %v, want forbidden", err)
	}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "default"}}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("create a deployment outside roam-services: %v, want forbidden", err)
	}
	be, err := kube.New(cs, kube.Config{Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.Deploy(ctx, webSpec("registry.example/web:1")); err == nil || !apierrors.IsForbidden(errors.Unwrap(err)) {
		t.Fatalf("the backend pointed at another namespace: %v, want forbidden", err)
	}
}
