package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

const ns = "roam-services"

var (
	deploymentsGVR    = appsv1.SchemeGroupVersion.WithResource("deployments")
	servicesGVR       = corev1.SchemeGroupVersion.WithResource("services")
	endpointSlicesGVR = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")
)

// cluster is a fake clientset plus reactors that play the parts of the
// control plane the backend relies on: the API server allocating node
// ports, the Deployment controller (Available after a few observations),
// the EndpointSlice controller and, for LoadBalancer services, the cloud
// load-balancer controller. The reactors write to the tracker directly, so
// c.Actions() holds only what the backend itself called.
type cluster struct {
	*fake.Clientset
	mu         sync.Mutex
	readyAfter int            // gets of a deployment before it is Available
	seen       map[string]int // deployment name -> gets so far
	nextPort   int32
	lbIP       string
}

func newCluster(t *testing.T, objs ...runtime.Object) *cluster {
	t.Helper()
	nodes := []runtime.Object{
		node("node-a", "10.1.0.1", "", false, "4", "8Gi", "110"),
		node("node-b", "10.1.0.2", "192.0.2.2", false, "2", "4Gi", "110"),
		node("node-c", "10.1.0.3", "", true, "8", "16Gi", "110"), // cordoned
	}
	c := &cluster{Clientset: fake.NewClientset(append(nodes, objs...)...), readyAfter: 2, seen: map[string]int{}, nextPort: 30000}
	tr := c.Tracker()

	// API server: allocate node ports on create.
	c.PrependReactor("create", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		svc := a.(k8stesting.CreateAction).GetObject().(*corev1.Service)
		c.mu.Lock()
		defer c.mu.Unlock()
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			for i := range svc.Spec.Ports {
				if svc.Spec.Ports[i].NodePort == 0 {
					svc.Spec.Ports[i].NodePort = c.nextPort
					c.nextPort++
				}
			}
		}
		svc.UID = types.UID("uid-svc-" + svc.Name)
		return false, nil, nil
	})
	c.PrependReactor("create", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.CreateAction).GetObject().(*appsv1.Deployment)
		d.UID = types.UID("uid-deploy-" + d.Name)
		d.Generation = 1
		return false, nil, nil
	})
	c.PrependReactor("update", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.UpdateAction).GetObject().(*appsv1.Deployment)
		d.Generation++ // spec changed: the controller must observe it again
		c.mu.Lock()
		c.seen[d.Name] = 0
		c.mu.Unlock()
		return false, nil, nil
	})
	// Deployment controller: after readyAfter gets, the rollout is done.
	c.PrependReactor("get", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		name := a.(k8stesting.GetAction).GetName()
		obj, err := tr.Get(deploymentsGVR, a.GetNamespace(), name)
		if err != nil {
			return false, nil, nil
		}
		d := obj.(*appsv1.Deployment)
		c.mu.Lock()
		c.seen[name]++
		n := c.seen[name]
		c.mu.Unlock()
		if n < c.readyAfter || available(d) {
			return false, nil, nil
		}
		d = d.DeepCopy()
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}},
		}
		if err := tr.Update(deploymentsGVR, d, d.Namespace); err != nil {
			return true, nil, fmt.Errorf("fake deployment controller: %w", err)
		}
		return false, nil, nil
	})
	// EndpointSlice controller: a ready endpoint on node-b once the pods of
	// an available deployment exist behind a service.
	c.PrependReactor("list", "endpointslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sel := a.(k8stesting.ListAction).GetListRestrictions().Labels
		for _, o := range mustList(tr, deploymentsGVR, appsv1.SchemeGroupVersion.WithKind("Deployment"), a.GetNamespace()).(*appsv1.DeploymentList).Items {
			if !available(&o) || !sel.Matches(labels.Set{discoveryv1.LabelServiceName: o.Name}) {
				continue
			}
			if _, err := tr.Get(servicesGVR, o.Namespace, o.Name); err != nil {
				continue
			}
			if _, err := tr.Get(endpointSlicesGVR, o.Namespace, o.Name+"-abcde"); err == nil {
				continue
			}
			ready, nodeName := true, "node-b"
			es := &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: o.Name + "-abcde", Namespace: o.Namespace, Labels: map[string]string{discoveryv1.LabelServiceName: o.Name}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.7"}, NodeName: &nodeName, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			}
			if err := tr.Create(endpointSlicesGVR, es, o.Namespace); err != nil {
				return true, nil, fmt.Errorf("fake endpointslice controller: %w", err)
			}
		}
		return false, nil, nil
	})
	// Cloud controller: LoadBalancer services get an ingress IP when read.
	c.PrependReactor("get", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if c.lbIP == "" {
			return false, nil, nil
		}
		obj, err := tr.Get(servicesGVR, a.GetNamespace(), a.(k8stesting.GetAction).GetName())
		if err != nil {
			return false, nil, nil
		}
		svc := obj.(*corev1.Service).DeepCopy()
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(svc.Status.LoadBalancer.Ingress) > 0 {
			return false, nil, nil
		}
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: c.lbIP}}
		if err := tr.Update(servicesGVR, svc, svc.Namespace); err != nil {
			return true, nil, fmt.Errorf("fake cloud controller: %w", err)
		}
		return false, nil, nil
	})
	return c
}

func mustList(tr k8stesting.ObjectTracker, gvr schema.GroupVersionResource, gvk schema.GroupVersionKind, ns string) runtime.Object {
	o, err := tr.List(gvr, gvk, ns)
	if err != nil {
		panic(err)
	}
	return o
}

func node(name, internal, external string, unschedulable bool, cpu, mem, pods string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Unschedulable: unschedulable}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: internal}, {Type: corev1.NodeHostName, Address: name}}
	if external != "" {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: external})
	}
	n.Status.Allocatable = corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem), corev1.ResourcePods: resource.MustParse(pods),
	}
	return n
}

func pod(namespace, name, nodeName string, phase corev1.PodPhase, cpu, mem string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		}}}},
		Status: corev1.PodStatus{Phase: phase},
	}
}

func newBackend(t *testing.T, c *cluster, cfg Config) *Backend {
	t.Helper()
	cfg.Namespace = ns
	cfg.PollInterval = 5 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func demoSpec(name string) backend.Spec {
	return backend.Spec{
		Name: name, Home: "cluster-a", MigrationID: "mig-1", Image: "registry.example/roam-demo:1",
		Ports:     []backend.Port{{Port: 8080, Protocol: lb.TCP}, {Name: "dns", Port: 53, Protocol: lb.UDP}},
		Resources: backend.Resources{MilliCPU: 250, MemoryMB: 64},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type act struct{ verb, resource string }

func (a act) String() string { return a.verb + " " + a.resource }

func actions(c *cluster) []act {
	var out []act
	for _, a := range c.Actions() {
		if a.GetNamespace() != "" && a.GetNamespace() != ns {
			panic("action in unexpected namespace " + a.GetNamespace())
		}
		out = append(out, act{a.GetVerb(), a.GetResource().Resource})
	}
	return out
}

func TestDeployNodePort(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, c, Config{})
	inst, err := b.Deploy(ctxT(t), demoSpec("web"))
	if err != nil {
		t.Fatal(err)
	}
	// node-b runs the endpoint; it has an ExternalIP, preferred by default.
	want := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:30000"), netip.MustParseAddrPort("192.0.2.2:30001")}
	if !inst.Ready || !slices.Equal(inst.Endpoints, want) || inst.Home != "cluster-a" || inst.MigrationID != "mig-1" || inst.Name != "web" {
		t.Fatalf("instance = %+v, want ready at %v", inst, want)
	}
	// Like sample-controller's tests: the exact calls, in order.
	wantActs := []act{
		{"create", "deployments"}, {"create", "services"},
		{"get", "deployments"}, // not available yet
		{"get", "deployments"}, // available
		{"get", "services"}, {"list", "endpointslices"}, {"get", "nodes"},
	}
	if got := actions(c); !slices.Equal(got, wantActs) {
		t.Fatalf("actions:\n got %v\nwant %v", got, wantActs)
	}
	// The objects carry ownership labels, annotations and the spec.
	d, err := c.AppsV1().Deployments(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels[LabelManagedBy] != "roam" || d.Labels[LabelService] != "web" ||
		d.Annotations[AnnotationHome] != "cluster-a" || d.Annotations[AnnotationMigration] != "mig-1" {
		t.Fatalf("deployment metadata: %v %v", d.Labels, d.Annotations)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	if ctr.Image != "registry.example/roam-demo:1" || len(ctr.Ports) != 2 || ctr.Ports[1].Protocol != corev1.ProtocolUDP ||
		ctr.Resources.Requests.Cpu().MilliValue() != 250 || ctr.Resources.Requests.Memory().Value() != 64<<20 || ctr.ReadinessProbe == nil {
		t.Fatalf("container: %+v", ctr)
	}
	svc, err := c.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Selector[LabelService] != "web" || svc.Labels[LabelManagedBy] != "roam" ||
		svc.Annotations[AnnotationHome] != "cluster-a" {
		t.Fatalf("service: %+v", svc)
	}

	// Deploying the same spec again changes nothing and returns the instance.
	c.ClearActions()
	again, err := b.Deploy(ctxT(t), demoSpec("web"))
	if err != nil || !slices.Equal(again.Endpoints, want) {
		t.Fatalf("redeploy: %+v %v", again, err)
	}
	for _, a := range actions(c) {
		if a.verb == "update" {
			t.Fatalf("redeploy of the same spec updated: %v", actions(c))
		}
	}
	// A new migration id updates both objects and waits for the new rollout.
	c.ClearActions()
	s := demoSpec("web")
	s.MigrationID = "mig-2"
	inst, err = b.Deploy(ctxT(t), s)
	if err != nil || inst.MigrationID != "mig-2" || !inst.Ready || !slices.Equal(inst.Endpoints, want) {
		t.Fatalf("deploy changed spec: %+v %v", inst, err)
	}
	wantActs = []act{
		{"create", "deployments"}, {"get", "deployments"}, {"update", "deployments"},
		{"create", "services"}, {"get", "services"}, {"update", "services"},
		{"get", "deployments"}, {"get", "deployments"}, {"get", "services"}, {"list", "endpointslices"}, {"get", "nodes"},
	}
	if got := actions(c); !slices.Equal(got, wantActs) {
		t.Fatalf("actions:\n got %v\nwant %v", got, wantActs)
	}
	// A different workload under the name is refused, not rolled out.
	s.Image = "registry.example/other:2"
	if _, err := b.Deploy(ctxT(t), s); err == nil || !strings.Contains(err.Error(), "different spec") {
		t.Fatalf("a different workload under the name: %v", err)
	}
}

func TestDeployDataAddrAndLoadBalancer(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, c, Config{DataAddr: netip.MustParseAddr("203.0.113.9"), NodeAddressTypes: []corev1.NodeAddressType{corev1.NodeInternalIP}})
	inst, err := b.Deploy(ctxT(t), demoSpec("a"))
	if err != nil || inst.Endpoints[0] != netip.MustParseAddrPort("203.0.113.9:30000") {
		t.Fatalf("data addr: %+v %v", inst, err)
	}
	for _, a := range actions(c) {
		if a.resource == "nodes" {
			t.Fatalf("with DataAddr the node need not be read: %v", actions(c))
		}
	}

	c = newCluster(t)
	b = newBackend(t, c, Config{NodeAddressTypes: []corev1.NodeAddressType{corev1.NodeInternalIP}})
	inst, err = b.Deploy(ctxT(t), demoSpec("b"))
	if err != nil || inst.Endpoints[0] != netip.MustParseAddrPort("10.1.0.2:30000") {
		t.Fatalf("internal ip: %+v %v", inst, err)
	}

	c = newCluster(t)
	c.lbIP = "198.51.100.4"
	b = newBackend(t, c, Config{ServiceType: corev1.ServiceTypeLoadBalancer})
	inst, err = b.Deploy(ctxT(t), demoSpec("lb"))
	want := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.4:8080"), netip.MustParseAddrPort("198.51.100.4:53")}
	if err != nil || !slices.Equal(inst.Endpoints, want) {
		t.Fatalf("load balancer: %+v %v", inst, err)
	}
}

func TestDeployWaitsAndHonoursContext(t *testing.T) {
	c := newCluster(t)
	c.readyAfter = 1 << 30 // the rollout never completes
	b := newBackend(t, c, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := b.Deploy(ctx, demoSpec("stuck"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for available") {
		t.Fatalf("err = %v, want deadline while waiting", err)
	}
	inst, err := b.Get(context.Background(), "stuck")
	if err != nil || inst.Ready || len(inst.Endpoints) != 0 {
		t.Fatalf("stuck instance: %+v %v", inst, err)
	}
}

func TestDemoService(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, c, Config{ClusterID: "cluster-b"})
	s := backend.Spec{Name: "demo", Home: "cluster-a", Demo: true, Ports: []backend.Port{{Port: 8080, Protocol: lb.TCP}}}
	if _, err := b.Deploy(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	d, err := c.AppsV1().Deployments(ns).Get(context.Background(), "demo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	want := []string{"/usr/local/bin/roam-ctrl", "demo", "--listen=:8080", "--cluster=cluster-b"}
	if ctr.Image != DefaultDemoImage || !slices.Equal(ctr.Command, want) {
		t.Fatalf("demo container: %s %v", ctr.Image, ctr.Command)
	}
	s.Name, s.Ports = "demo-udp", []backend.Port{{Port: 53, Protocol: lb.UDP}}
	if _, err := b.Deploy(ctxT(t), s); err == nil {
		t.Fatal("demo on udp accepted")
	}
}

func TestBadInput(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, c, Config{})
	for _, s := range []backend.Spec{
		{Name: "Bad_Name", Image: "x", Ports: []backend.Port{{Port: 1, Protocol: lb.TCP}}},
		{Name: "noports", Image: "x"},
		{Name: "noimage", Ports: []backend.Port{{Port: 1, Protocol: lb.TCP}}},
	} {
		if _, err := b.Deploy(ctxT(t), s); err == nil {
			t.Errorf("deploy %+v: no error", s)
		}
	}
	if len(c.Actions()) != 0 {
		t.Fatalf("bad specs reached the API: %v", actions(c))
	}
	if _, err := New(c, Config{ServiceType: "ClusterIP"}); err == nil {
		t.Fatal("ClusterIP accepted")
	}
	if _, err := New(nil, Config{}); err == nil {
		t.Fatal("nil client accepted")
	}
}

func TestForeignObjectsUntouched(t *testing.T) {
	// Objects of the same name that roam did not create.
	theirs := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}}}
	theirSvc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}}
	c := newCluster(t, theirs, theirSvc)
	b := newBackend(t, c, Config{})
	if _, err := b.Deploy(ctxT(t), demoSpec("web")); err == nil || !strings.Contains(err.Error(), "not managed by roam") {
		t.Fatalf("deploy over a foreign deployment: %v", err)
	}
	if _, err := b.Get(ctxT(t), "web"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get foreign: %v", err)
	}
	if err := b.Delete(ctxT(t), "web"); err == nil {
		t.Fatal("delete of a foreign service succeeded")
	}
	if _, err := c.AppsV1().Deployments(ns).Get(context.Background(), "web", metav1.GetOptions{}); err != nil {
		t.Fatalf("foreign deployment gone: %v", err)
	}
	if l, err := b.List(ctxT(t)); err != nil || len(l) != 0 {
		t.Fatalf("list: %v %v", l, err)
	}
}

func TestGetListDelete(t *testing.T) {
	c := newCluster(t)
	b := newBackend(t, c, Config{})
	ctx := ctxT(t)
	if _, err := b.Get(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	for _, n := range []string{"zeta", "alpha"} {
		if _, err := b.Deploy(ctx, demoSpec(n)); err != nil {
			t.Fatal(err)
		}
	}
	// A restarted controller: a fresh backend on the same cluster finds both.
	b2 := newBackend(t, c, Config{})
	l, err := b2.List(ctx)
	if err != nil || len(l) != 2 || l[0].Name != "alpha" || l[1].Name != "zeta" || !l[0].Ready || l[0].Home != "cluster-a" || len(l[1].Endpoints) != 2 {
		t.Fatalf("list: %+v %v", l, err)
	}
	c.ClearActions()
	if err := b2.Delete(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	wantActs := []act{{"get", "services"}, {"delete", "services"}, {"get", "deployments"}, {"delete", "deployments"}}
	if got := actions(c); !slices.Equal(got, wantActs) {
		t.Fatalf("delete actions: got %v want %v", got, wantActs)
	}
	if err := b2.Delete(ctx, "alpha"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := b2.Get(ctx, "alpha"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if l, err := b2.List(ctx); err != nil || len(l) != 1 || l[0].Name != "zeta" {
		t.Fatalf("list after delete: %+v %v", l, err)
	}
}

func TestCapacity(t *testing.T) {
	c := newCluster(t,
		pod("kube-system", "dns", "node-a", corev1.PodRunning, "100m", "70Mi"),
		pod("default", "app", "node-b", corev1.PodPending, "500m", "256Mi"),
		pod("default", "done", "node-b", corev1.PodSucceeded, "1", "1Gi"),   // finished: not counted
		pod("default", "cordoned", "node-c", corev1.PodRunning, "1", "1Gi"), // unschedulable node: not counted
		pod("default", "unscheduled", "", corev1.PodPending, "1", "1Gi"),    // no node yet
	)
	withInit := pod("default", "init", "node-a", corev1.PodRunning, "100m", "10Mi")
	withInit.Spec.InitContainers = []corev1.Container{{Name: "i", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("300m")}}}}
	if err := c.Tracker().Add(withInit); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t, c, Config{})
	got, err := b.Capacity(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := backend.Capacity{
		MilliCPU: 6000, MemoryMB: 12 << 10, Pods: 220,
		UsedMilliCPU: 100 + 500 + 300, UsedMemoryMB: 70 + 256 + 10, UsedPods: 3,
	}
	if got != want {
		t.Fatalf("capacity = %+v, want %+v", got, want)
	}
	if acts := actions(c); !slices.Equal(acts, []act{{"list", "nodes"}, {"list", "pods"}}) {
		t.Fatalf("actions %v", acts)
	}
}

// rule is one granted (group, resource, verb) and its scope.
type rule struct {
	namespaced      bool
	group, resource string
	verb            string
}

func loadRBAC(t *testing.T) map[rule]bool {
	t.Helper()
	raw, err := os.ReadFile("../../../deploy/base/rbac.yaml")
	if err != nil {
		t.Fatalf("read RBAC of the deploy manifests: %v", err)
	}
	grants := map[rule]bool{}
	add := func(namespaced bool, rules []rbacv1.PolicyRule) {
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						if g == "*" || res == "*" || v == "*" {
							t.Errorf("wildcard in RBAC rule %+v: not least privilege", r)
						}
						grants[rule{namespaced, g, res, v}] = true
					}
				}
			}
		}
	}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Role":
			var r rbacv1.Role
			if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
				t.Fatal(err)
			}
			if r.Namespace != ns {
				t.Errorf("Role %s in namespace %q, the backend's workloads live in %q", r.Name, r.Namespace, ns)
			}
			add(true, r.Rules)
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
				t.Fatal(err)
			}
			add(false, r.Rules)
		}
	}
	return grants
}

// TestRBACMatchesBackendCalls runs every backend method through every path
// (create, update, wait, LoadBalancer, delete, ownership conflicts,
// capacity) and checks the calls against deploy/base/rbac.yaml both ways:
// every call is granted, every grant is used.
func TestRBACMatchesBackendCalls(t *testing.T) {
	grants := loadRBAC(t)
	used := map[rule]bool{}
	record := func(c *cluster) {
		for _, a := range c.Actions() {
			r := rule{a.GetNamespace() != "", a.GetResource().Group, a.GetResource().Resource, a.GetVerb()}
			used[r] = true
			if !grants[r] {
				t.Errorf("backend calls %s %s (group %q, namespaced %v): not granted in deploy/base/rbac.yaml", r.verb, r.resource, r.group, r.namespaced)
			}
		}
	}
	ctx := ctxT(t)
	for _, typ := range []corev1.ServiceType{corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer} {
		c := newCluster(t, pod("x", "p", "node-a", corev1.PodRunning, "1", "1Mi"))
		c.lbIP = "198.51.100.1"
		b := newBackend(t, c, Config{ServiceType: typ})
		s := demoSpec("svc")
		if _, err := b.Deploy(ctx, s); err != nil {
			t.Fatal(err)
		}
		s.MigrationID = "mig-9"
		if _, err := b.Deploy(ctx, s); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, "svc"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.List(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Capacity(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, "svc"); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, "svc"); err != nil {
			t.Fatal(err)
		}
		record(c)
	}
	for g := range grants {
		if !used[g] {
			t.Errorf("deploy/base/rbac.yaml grants %s %s (group %q, namespaced %v) that the backend never calls", g.verb, g.resource, g.group, g.namespaced)
		}
	}
}
