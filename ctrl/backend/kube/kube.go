// Package kube is the Kubernetes orchestrator backend: it runs a service as a
// Deployment plus a NodePort or LoadBalancer Service, labelled and annotated
// so a restarted controller can find (List) and reconcile what it made.
//
// Every API call it makes is listed in the RBAC rules of deploy/base
// (rbac.yaml); a test checks the two agree exactly.
package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

// Labels and annotations roam puts on what it creates.
const (
	LabelManagedBy      = "app.kubernetes.io/managed-by"
	ManagedByValue      = "roam"
	LabelService        = "roam.io/service"
	AnnotationHome      = "roam.io/home-cluster"
	AnnotationMigration = "roam.io/migration-id"
	// AnnotationEpoch is the home's move counter: with the migration id,
	// the copy's fence (backend.Spec.Epoch).
	AnnotationEpoch = "roam.io/epoch"
	// AnnotationSpecHash records the hash of the backend.Spec a Deployment
	// was made from, so a repeated Deploy of the same spec changes nothing.
	AnnotationSpecHash = "roam.io/spec-hash"
)

// Config tunes the backend. The zero value is usable: namespace from the
// pod's service account (or "default"), NodePort services, 500ms polling.
type Config struct {
	// Namespace holds the Deployments and Services roam creates.
	Namespace string
	// ServiceType is corev1.ServiceTypeNodePort (default) or
	// corev1.ServiceTypeLoadBalancer.
	ServiceType corev1.ServiceType
	// DataAddr, when valid, is the address reported with the node port
	// (the cluster's --data-addr); otherwise the address of a node that
	// runs a ready endpoint, chosen by NodeAddressTypes.
	DataAddr netip.Addr
	// NodeAddressTypes is the order in which node addresses are preferred
	// (default ExternalIP then InternalIP).
	NodeAddressTypes []corev1.NodeAddressType
	// ClusterID is reported by the built-in demo service (Spec.Demo).
	ClusterID string
	// DemoImage runs Spec.Demo services that name no image: roam's own
	// image, whose roam-ctrl has the demo subcommand (default
	// DefaultDemoImage).
	DemoImage string
	// PollInterval is how often Deploy checks readiness (default 500ms).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Backend implements backend.Backend on a Kubernetes cluster.
type Backend struct {
	client kubernetes.Interface
	cfg    Config
	log    *slog.Logger
}

var _ backend.Backend = (*Backend)(nil)

// New returns a backend that uses client.
func New(client kubernetes.Interface, cfg Config) (*Backend, error) {
	if client == nil {
		return nil, errors.New("new kube backend: nil client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = podNamespace()
	}
	switch cfg.ServiceType {
	case "":
		cfg.ServiceType = corev1.ServiceTypeNodePort
	case corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		return nil, fmt.Errorf("new kube backend: service type %q: want NodePort or LoadBalancer", cfg.ServiceType)
	}
	if len(cfg.NodeAddressTypes) == 0 {
		cfg.NodeAddressTypes = []corev1.NodeAddressType{corev1.NodeExternalIP, corev1.NodeInternalIP}
	}
	if cfg.DemoImage == "" {
		cfg.DemoImage = DefaultDemoImage
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Backend{client: client, cfg: cfg, log: cfg.Logger.With("backend", "kubernetes", "namespace", cfg.Namespace)}, nil
}

// NewInCluster returns a backend using the pod's service account.
func NewInCluster(cfg Config) (*Backend, error) {
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("load in-cluster config: %w (is roam-ctrl running in a pod with a service account?)", err)
	}
	return fromRest(rc, cfg)
}

// NewFromKubeconfig returns a backend using a kubeconfig file; an empty path
// uses the usual rules ($KUBECONFIG, then ~/.kube/config).
func NewFromKubeconfig(path string, cfg Config) (*Backend, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	if cfg.Namespace == "" {
		cfg.Namespace = os.Getenv(EnvNamespace)
	}
	if cfg.Namespace == "" {
		if ns, _, err := cc.Namespace(); err == nil && ns != "" {
			cfg.Namespace = ns
		}
	}
	return fromRest(rc, cfg)
}

// Environment variables the in-cluster and kubeconfig constructors read for
// fields cfg leaves empty (the deploy/ manifests set them on roam-ctrl).
const (
	EnvNamespace   = "ROAM_KUBE_NAMESPACE"    // namespace of the workloads
	EnvServiceType = "ROAM_KUBE_SERVICE_TYPE" // NodePort or LoadBalancer
	EnvDemoImage   = "ROAM_KUBE_DEMO_IMAGE"   // image for Spec.Demo
	EnvClusterID   = "ROAM_CLUSTER_ID"        // reported by the demo service
)

// DefaultDemoImage is the image built by deploy/Dockerfile.
const DefaultDemoImage = "ghcr.io/roamnet/roam:latest"

// NewAuto picks in-cluster config inside a pod and the kubeconfig rules
// otherwise.
func NewAuto(cfg Config) (*Backend, error) {
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBECONFIG") == "" {
		return NewInCluster(cfg)
	}
	return NewFromKubeconfig("", cfg)
}

func fromRest(rc *rest.Config, cfg Config) (*Backend, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = os.Getenv(EnvNamespace)
	}
	if cfg.ServiceType == "" {
		cfg.ServiceType = corev1.ServiceType(os.Getenv(EnvServiceType))
	}
	if cfg.DemoImage == "" {
		cfg.DemoImage = os.Getenv(EnvDemoImage)
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = os.Getenv(EnvClusterID)
	}
	rc.UserAgent = "roam-ctrl"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("new kubernetes client: %w", err)
	}
	return New(cs, cfg)
}

const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func podNamespace() string {
	if b, err := os.ReadFile(saNamespaceFile); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "default"
}

func ownLabels(name string) map[string]string {
	return map[string]string{LabelManagedBy: ManagedByValue, LabelService: name}
}

func owned(m metav1.Object) bool {
	return m.GetLabels()[LabelManagedBy] == ManagedByValue && m.GetLabels()[LabelService] == m.GetName()
}

// specHash is the hash of s's workload (its fence aside: a relabel with a
// new epoch changes annotations only).
func specHash(s backend.Spec) string {
	s.Home, s.MigrationID, s.Epoch = "", "", 0
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

func portName(i int, p backend.Port) string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("%s-%d", p.Protocol, p.Port)
}

func k8sProto(p lb.Proto) corev1.Protocol {
	if p == lb.UDP {
		return corev1.ProtocolUDP
	}
	return corev1.ProtocolTCP
}

func (b *Backend) deployment(s backend.Spec) *appsv1.Deployment {
	one := int32(1)
	c := corev1.Container{Name: "service", Image: s.Image, Command: slices.Clone(s.Command)}
	if s.Demo && s.Image == "" {
		// roam-ctrl's built-in demo HTTP service, from roam's own image.
		c.Image = b.cfg.DemoImage
		c.Command = []string{"/usr/local/bin/roam-ctrl", "demo", fmt.Sprintf("--listen=:%d", s.Ports[0].Port), "--cluster=" + b.cfg.ClusterID}
		// The demo answers UDP ports too; on SIGTERM (the pod's
		// termination) it stops gracefully within the grace period.
		for _, p := range s.Ports[1:] {
			if p.Protocol == lb.UDP {
				c.Command = append(c.Command, fmt.Sprintf("--udp=:%d", p.Port))
			}
		}
	}
	for i, p := range s.Ports {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: truncName(portName(i, p)), ContainerPort: int32(p.Port), Protocol: k8sProto(p.Protocol)})
	}
	req := corev1.ResourceList{}
	if s.Resources.MilliCPU > 0 {
		req[corev1.ResourceCPU] = *resource.NewMilliQuantity(s.Resources.MilliCPU, resource.DecimalSI)
	}
	if s.Resources.MemoryMB > 0 {
		req[corev1.ResourceMemory] = *resource.NewQuantity(s.Resources.MemoryMB<<20, resource.BinarySI)
	}
	if len(req) > 0 {
		c.Resources.Requests = req
	}
	// Ready only when the first port accepts connections (TCP) — the
	// backend's "ready" must mean the service answers.
	if p := s.Ports[0]; p.Protocol == lb.TCP {
		c.ReadinessProbe = &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(p.Port))}},
			PeriodSeconds: 1,
		}
	}
	meta := b.objectMeta(s)
	meta.Annotations[AnnotationSpecHash] = specHash(s)
	return &appsv1.Deployment{
		ObjectMeta: meta,
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: ownLabels(s.Name)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: ownLabels(s.Name)},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
			},
		},
	}
}

// objectMeta is the name, namespace, labels and annotations (home,
// migration, epoch) of the objects that make s's copy.
func (b *Backend) objectMeta(s backend.Spec) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      s.Name,
		Namespace: b.cfg.Namespace,
		Labels:    ownLabels(s.Name),
		Annotations: map[string]string{
			AnnotationHome:      s.Home,
			AnnotationMigration: s.MigrationID,
			AnnotationEpoch:     strconv.FormatUint(s.Epoch, 10),
		},
	}
}

// truncName keeps a port name within the 15-character IANA_SVC_NAME limit.
func truncName(s string) string {
	if len(s) > 15 {
		return s[:15]
	}
	return s
}

func (b *Backend) service(s backend.Spec) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: b.objectMeta(s),
		Spec: corev1.ServiceSpec{
			Type:     b.cfg.ServiceType,
			Selector: ownLabels(s.Name),
		},
	}
	for i, p := range s.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name:       truncName(portName(i, p)),
			Port:       int32(p.Port),
			TargetPort: intstr.FromInt32(int32(p.Port)),
			Protocol:   k8sProto(p.Protocol),
		})
	}
	return svc
}

// Deploy creates (or keeps) the Deployment and Service of s and waits until
// the Deployment is Available and the Service has a ready endpoint.
func (b *Backend) Deploy(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	if err := s.Validate(); err != nil {
		return backend.Instance{}, fmt.Errorf("deploy: %w", err)
	}
	if s.Image == "" && !s.Demo {
		return backend.Instance{}, fmt.Errorf("deploy %s: the kubernetes backend needs an image (or demo)", s.Name)
	}
	if s.Demo && s.Image == "" && s.Ports[0].Protocol != lb.TCP {
		return backend.Instance{}, fmt.Errorf("deploy %s: the demo service speaks HTTP: its first port must be tcp", s.Name)
	}
	if err := b.ensureDeployment(ctx, s); err != nil {
		return backend.Instance{}, err
	}
	if err := b.ensureService(ctx, s); err != nil {
		return backend.Instance{}, err
	}
	t := time.NewTicker(b.cfg.PollInterval)
	defer t.Stop()
	for {
		inst, err := b.Get(ctx, s.Name)
		if err != nil {
			return backend.Instance{}, fmt.Errorf("deploy %s: %w", s.Name, err)
		}
		if inst.Ready && len(inst.Endpoints) == len(s.Ports) {
			b.log.Info("deployed", "service", s.Name, "endpoints", inst.Endpoints, "home", s.Home, "migration", s.MigrationID)
			return inst, nil
		}
		select {
		case <-ctx.Done():
			return backend.Instance{}, fmt.Errorf("deploy %s: wait for available deployment and ready endpoints: %w", s.Name, ctx.Err())
		case <-t.C:
		}
	}
}

// ensureOwned creates want or, when an object of its name exists already
// and roam manages it, brings it to want: update says what to write over
// cur (changed false: cur is as wanted).
func ensureOwned[T metav1.Object](ctx context.Context, api interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Get(context.Context, string, metav1.GetOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}, kind string, want T, update func(cur T) (upd T, changed bool, err error)) error {
	name := want.GetName()
	_, err := api.Create(ctx, want, metav1.CreateOptions{FieldManager: "roam"})
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create %s %s: %w", kind, name, err)
	}
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get %s %s: %w", kind, name, err)
	}
	if !owned(cur) {
		return fmt.Errorf("deploy %s: a %s of that name exists and is not managed by roam", name, kind)
	}
	upd, changed, err := update(cur)
	if err != nil || !changed {
		return err
	}
	if _, err := api.Update(ctx, upd, metav1.UpdateOptions{FieldManager: "roam"}); err != nil {
		return fmt.Errorf("update %s %s: %w", kind, name, err)
	}
	return nil
}

func (b *Backend) ensureDeployment(ctx context.Context, s backend.Spec) error {
	want := b.deployment(s)
	return ensureOwned(ctx, b.client.AppsV1().Deployments(b.cfg.Namespace), "deployment", want, func(cur *appsv1.Deployment) (*appsv1.Deployment, bool, error) {
		if cur.Annotations[AnnotationSpecHash] != want.Annotations[AnnotationSpecHash] {
			return nil, false, fmt.Errorf("deploy %s: already runs with a different spec (spec hash %s, asked %s)", s.Name,
				cur.Annotations[AnnotationSpecHash], want.Annotations[AnnotationSpecHash])
		}
		same := true
		for k, v := range want.Annotations {
			same = same && cur.Annotations[k] == v
		}
		if same {
			return nil, false, nil
		}
		// The same workload: relabel it with the new fence (no rollout);
		// annotations others put there (the rollout's revision) stay.
		upd := cur.DeepCopy()
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		maps.Copy(upd.Annotations, want.Annotations)
		return upd, true, nil
	})
}

func (b *Backend) ensureService(ctx context.Context, s backend.Spec) error {
	want := b.service(s)
	return ensureOwned(ctx, b.client.CoreV1().Services(b.cfg.Namespace), "service", want, func(cur *corev1.Service) (*corev1.Service, bool, error) {
		if sameServicePorts(cur, want) && cur.Spec.Type == want.Spec.Type &&
			cur.Annotations[AnnotationHome] == s.Home && cur.Annotations[AnnotationMigration] == s.MigrationID &&
			cur.Annotations[AnnotationEpoch] == strconv.FormatUint(s.Epoch, 10) {
			return nil, false, nil
		}
		upd := cur.DeepCopy()
		upd.Labels, upd.Annotations = want.Labels, want.Annotations
		// Keep the node ports already allocated: the endpoint other clusters
		// use must not move because the migration id changed.
		for i, p := range want.Spec.Ports {
			for _, old := range cur.Spec.Ports {
				if old.Port == p.Port && old.Protocol == p.Protocol {
					want.Spec.Ports[i].NodePort = old.NodePort
				}
			}
		}
		upd.Spec.Type, upd.Spec.Selector, upd.Spec.Ports = want.Spec.Type, want.Spec.Selector, want.Spec.Ports
		return upd, true, nil
	})
}

func sameServicePorts(a, b *corev1.Service) bool {
	if len(a.Spec.Ports) != len(b.Spec.Ports) {
		return false
	}
	for i := range a.Spec.Ports {
		x, y := a.Spec.Ports[i], b.Spec.Ports[i]
		if x.Name != y.Name || x.Port != y.Port || x.Protocol != y.Protocol || x.TargetPort != y.TargetPort {
			return false
		}
	}
	return true
}

// Delete removes the Service and Deployment of name if roam manages them.
// A missing name is not an error.
func (b *Backend) Delete(ctx context.Context, name string) error {
	svcs := b.client.CoreV1().Services(b.cfg.Namespace)
	if svc, err := svcs.Get(ctx, name, metav1.GetOptions{}); err == nil {
		if !owned(svc) {
			return fmt.Errorf("delete service %s: not managed by roam", name)
		}
		uid := svc.UID
		err := svcs.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete service %s: %w", name, err)
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get service %s: %w", name, err)
	}
	deps := b.client.AppsV1().Deployments(b.cfg.Namespace)
	d, err := deps.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get deployment %s: %w", name, err)
	}
	if !owned(d) {
		return fmt.Errorf("delete deployment %s: not managed by roam", name)
	}
	uid := d.UID
	bg := metav1.DeletePropagationBackground
	err = deps.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}, PropagationPolicy: &bg})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete deployment %s: %w", name, err)
	}
	b.log.Info("deleted", "service", name)
	return nil
}

// Get reports one instance: Ready when its Deployment is Available and its
// Service has a ready endpoint; Endpoints once they can be reached.
func (b *Backend) Get(ctx context.Context, name string) (backend.Instance, error) {
	d, err := b.client.AppsV1().Deployments(b.cfg.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return backend.Instance{}, fmt.Errorf("get deployment %s: %w", name, backend.ErrNotFound)
	}
	if err != nil {
		return backend.Instance{}, fmt.Errorf("get deployment %s: %w", name, err)
	}
	if !owned(d) {
		return backend.Instance{}, fmt.Errorf("get deployment %s: not managed by roam: %w", name, backend.ErrNotFound)
	}
	return b.instance(ctx, d)
}

// List returns every instance roam manages in the namespace.
func (b *Backend) List(ctx context.Context) ([]backend.Instance, error) {
	sel := labels.Set{LabelManagedBy: ManagedByValue}.String()
	ds, err := b.client.AppsV1().Deployments(b.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	out := make([]backend.Instance, 0, len(ds.Items))
	for i := range ds.Items {
		d := &ds.Items[i]
		if !owned(d) {
			continue
		}
		inst, err := b.instance(ctx, d)
		if err != nil {
			return nil, err
		}
		out = append(out, inst)
	}
	slices.SortFunc(out, func(a, b backend.Instance) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func available(d *appsv1.Deployment) bool {
	if d.Status.ObservedGeneration < d.Generation {
		return false
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (b *Backend) instance(ctx context.Context, d *appsv1.Deployment) (backend.Instance, error) {
	inst := backend.Instance{Name: d.Name, Home: d.Annotations[AnnotationHome], MigrationID: d.Annotations[AnnotationMigration]}
	inst.Epoch, _ = strconv.ParseUint(d.Annotations[AnnotationEpoch], 10, 64) // absent on copies from before epochs: 0
	if !available(d) {
		return inst, nil
	}
	svc, err := b.client.CoreV1().Services(b.cfg.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return inst, nil
	}
	if err != nil {
		return inst, fmt.Errorf("get service %s: %w", d.Name, err)
	}
	node, ok, err := b.readyNode(ctx, d.Name)
	if err != nil || !ok {
		return inst, err
	}
	eps, err := b.endpoints(ctx, svc, node)
	if err != nil {
		return inst, err
	}
	inst.Endpoints = eps
	inst.Ready = len(eps) == len(svc.Spec.Ports) && len(eps) > 0
	return inst, nil
}

// readyNode returns the node of a ready endpoint of service name.
func (b *Backend) readyNode(ctx context.Context, name string) (string, bool, error) {
	sel := labels.Set{discoveryv1.LabelServiceName: name}.String()
	sl, err := b.client.DiscoveryV1().EndpointSlices(b.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", false, fmt.Errorf("list endpointslices of %s: %w", name, err)
	}
	var nodes []string
	for _, s := range sl.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			n := ""
			if e.NodeName != nil {
				n = *e.NodeName
			}
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return "", false, nil
	}
	slices.Sort(nodes) // stable choice across calls
	return nodes[len(nodes)-1], true, nil
}

func (b *Backend) endpoints(ctx context.Context, svc *corev1.Service, node string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	if b.cfg.ServiceType == corev1.ServiceTypeLoadBalancer || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		var ip netip.Addr
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(in.IP); err == nil {
				ip = a
				break
			}
		}
		if !ip.IsValid() {
			return nil, nil // not assigned yet
		}
		for _, p := range svc.Spec.Ports {
			out = append(out, netip.AddrPortFrom(ip, uint16(p.Port)))
		}
		return out, nil
	}
	addr := b.cfg.DataAddr
	if !addr.IsValid() {
		if node == "" {
			return nil, nil
		}
		n, err := b.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get node %s: %w", node, err)
		}
		addr = b.nodeAddr(n)
		if !addr.IsValid() {
			return nil, fmt.Errorf("node %s: no address of type %v", node, b.cfg.NodeAddressTypes)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.NodePort == 0 {
			return nil, nil // not allocated yet
		}
		out = append(out, netip.AddrPortFrom(addr, uint16(p.NodePort)))
	}
	return out, nil
}

func (b *Backend) nodeAddr(n *corev1.Node) netip.Addr {
	for _, t := range b.cfg.NodeAddressTypes {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				return ip
			}
		}
	}
	return netip.Addr{}
}

// Capacity sums the allocatable resources of schedulable nodes and the
// requests of the pods that are not finished on them.
func (b *Backend) Capacity(ctx context.Context) (backend.Capacity, error) {
	var c backend.Capacity
	nodes, err := b.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("list nodes: %w", err)
	}
	counted := map[string]bool{}
	for _, n := range nodes.Items {
		if n.Spec.Unschedulable {
			continue
		}
		counted[n.Name] = true
		a := n.Status.Allocatable
		c.MilliCPU += a.Cpu().MilliValue()
		c.MemoryMB += a.Memory().Value() >> 20
		c.Pods += a.Pods().Value()
	}
	pods, err := b.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: "status.phase!=Succeeded,status.phase!=Failed",
	})
	if err != nil {
		return c, fmt.Errorf("list pods: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if !counted[p.Spec.NodeName] || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		cpu, mem := podRequests(p)
		c.UsedMilliCPU += cpu
		c.UsedMemoryMB += mem >> 20
		c.UsedPods++
	}
	return c, nil
}

// podRequests is what the scheduler charges for p: the larger of the sum of
// its containers and its largest init container, plus the pod overhead.
func podRequests(p *corev1.Pod) (milliCPU, memBytes int64) {
	for _, c := range p.Spec.Containers {
		milliCPU += c.Resources.Requests.Cpu().MilliValue()
		memBytes += c.Resources.Requests.Memory().Value()
	}
	for _, c := range p.Spec.InitContainers {
		milliCPU = max(milliCPU, c.Resources.Requests.Cpu().MilliValue())
		memBytes = max(memBytes, c.Resources.Requests.Memory().Value())
	}
	milliCPU += p.Spec.Overhead.Cpu().MilliValue()
	memBytes += p.Spec.Overhead.Memory().Value()
	return milliCPU, memBytes
}

// KubeconfigPath is the default kubeconfig path, for help texts.
func KubeconfigPath() string {
	if p := os.Getenv("KUBECONFIG"); p != "" {
		return p
	}
	h, _ := os.UserHomeDir()
	return filepath.Join(h, ".kube", "config")
}
