//go:build k8s

package k8s

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/test/testport"
)

// Binaries lists what tools/build.sh puts in the control plane's directory.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl"}

// KwokNodeAnnotation marks the nodes kwok manages (and only those).
const KwokNodeAnnotation = "kwok.x-k8s.io/node"

// Options describe one control plane.
type Options struct {
	Name  string // cluster name, in logs and node names
	Bin   string // directory of the binaries and kwok-stages.yaml
	Dir   string // state: certificates, etcd data, logs
	Nodes int    // kwok nodes
	// NodeNet is the third octet of the nodes' InternalIPs (10.77.NodeNet.N),
	// so the two clusters' nodes differ.
	NodeNet byte
	// NodeCPU and NodeMemory are every node's allocatable.
	NodeCPU, NodeMemory string
}

// ControlPlane is a running etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok on loopback, and the kwok nodes it made.
type ControlPlane struct {
	Options
	URL        string // https://127.0.0.1:port
	CA         []byte // PEM of the CA that signed the serving certificate
	Admin      *kubernetes.Clientset
	AdminREST  *rest.Config
	Kubeconfig string // admin kubeconfig, for kubectl
	NodeNames  []string
	procs      []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// Start brings a control plane up and returns once its nodes are Ready and
// untainted and the default ServiceAccount exists: workloads created
// earlier wait on the scheduler's backoff. On error everything started is
// stopped again.
func Start(ctx context.Context, o Options) (cp *ControlPlane, err error) {
	if o.Nodes <= 0 {
		o.Nodes = 1
	}
	if o.NodeCPU == "" {
		o.NodeCPU = "4"
	}
	if o.NodeMemory == "" {
		o.NodeMemory = "8Gi"
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(o.Bin, b)); err != nil {
			return nil, fmt.Errorf("control plane binary %s: %w (build them: bash test/k8s/tools/build.sh %s)", b, err, o.Bin)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	cp = &ControlPlane{Options: o}
	defer func() {
		if err != nil {
			err = fmt.Errorf("control plane %s: %w%s", o.Name, err, cp.logTails())
			cp.Stop()
		}
	}()
	pki, err := writePKI(o.Dir)
	if err != nil {
		return cp, err
	}
	cp.CA = pki.caPEM

	// Ports below the ephemeral range, never handed out twice in this
	// process: a control plane's ports are chosen before its servers bind
	// them, and an ephemeral port could meanwhile be taken by a connection
	// (the other control plane's, say).
	ports, err := testport.TakeN(4)
	if err != nil {
		return cp, err
	}
	etcdClient, etcdPeer, apiPort, kwokPort := ports[0], ports[1], ports[2], ports[3]
	cp.URL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := cp.run("etcd",
		"--name="+o.Name, "--data-dir="+filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster="+o.Name+"="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return cp, err
	}
	if err := cp.waitHTTP(ctx, "etcd", etcdURL+"/health", nil); err != nil {
		return cp, err
	}

	if err := cp.run("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		// Without it the apiserver refuses to publish 127.0.0.1 as the
		// kubernetes Service's endpoint and never gets ready.
		"--endpoint-reconciler-type=none",
		"--cert-dir="+filepath.Join(o.Dir, "apiserver-certs"),
		"--tls-cert-file="+pki.serverCert, "--tls-private-key-file="+pki.serverKey,
		"--client-ca-file="+pki.caCert,
		"--token-auth-file="+pki.tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+pki.saPub, "--service-account-signing-key-file="+pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=0"); err != nil {
		return cp, err
	}
	auth := map[string]string{"Authorization": "Bearer " + pki.token["admin"]}
	if err := cp.waitHTTP(ctx, "kube-apiserver", cp.URL+"/readyz", auth); err != nil {
		return cp, err
	}
	cp.AdminREST = cp.Config(pki.token["admin"])
	if cp.Admin, err = kubernetes.NewForConfig(cp.AdminREST); err != nil {
		return cp, err
	}
	kc := map[string]string{}
	for _, who := range []string{"admin", "controller-manager", "scheduler", "kwok"} {
		kc[who] = filepath.Join(o.Dir, who+".kubeconfig")
		if err := os.WriteFile(kc[who], cp.kubeconfig(pki.token[who]), 0o600); err != nil {
			return cp, err
		}
	}
	cp.Kubeconfig = kc["admin"]

	if err := cp.run("kube-controller-manager",
		"--kubeconfig="+kc["controller-manager"],
		"--use-service-account-credentials", "--leader-elect=false", "--secure-port=0",
		"--service-account-private-key-file="+pki.saKey, "--root-ca-file="+pki.caCert,
		"--cluster-name="+o.Name, "--v=0"); err != nil {
		return cp, err
	}
	if err := cp.run("kube-scheduler",
		"--kubeconfig="+kc["scheduler"], "--leader-elect=false", "--secure-port=0", "--v=0"); err != nil {
		return cp, err
	}
	if err := cp.run("kwok",
		"--kubeconfig="+kc["kwok"],
		"--config="+filepath.Join(o.Bin, "kwok-stages.yaml"),
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector="+KwokNodeAnnotation+"=fake",
		"--cidr=10.244.0.0/16", "--node-lease-duration-seconds=40",
		fmt.Sprintf("--server-address=127.0.0.1:%d", kwokPort)); err != nil {
		return cp, err
	}
	if err := cp.addNodes(ctx); err != nil {
		return cp, err
	}
	return cp, nil
}

// Config is a client config for the apiserver with a bearer token.
func (cp *ControlPlane) Config(token string) *rest.Config {
	return &rest.Config{
		Host:            cp.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CA},
		QPS:             100, Burst: 200,
	}
}

func (cp *ControlPlane) kubeconfig(token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: %[1]s
  user:
    token: %[4]s
contexts:
- name: %[1]s
  context: {cluster: %[1]s, user: %[1]s}
current-context: %[1]s
`, cp.Name, cp.URL, b64(cp.CA), token)
}

// addNodes creates the kwok nodes and waits until each is Ready, untainted
// (the node lifecycle controller removes its not-ready taint) and the
// default ServiceAccount exists.
func (cp *ControlPlane) addNodes(ctx context.Context) error {
	for i := 1; i <= cp.Nodes; i++ {
		name := fmt.Sprintf("%s-node-%d", cp.Name, i)
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{KwokNodeAnnotation: "fake"},
				Labels:      map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
			},
			Status: corev1.NodeStatus{
				Allocatable: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse(cp.NodeCPU),
					corev1.ResourceMemory: resource.MustParse(cp.NodeMemory),
					corev1.ResourcePods:   resource.MustParse("110"),
				},
				Capacity: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse(cp.NodeCPU),
					corev1.ResourceMemory: resource.MustParse(cp.NodeMemory),
					corev1.ResourcePods:   resource.MustParse("110"),
				},
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.77.%d.%d", cp.NodeNet, i)},
					{Type: corev1.NodeHostName, Address: name},
				},
			},
		}
		if _, err := cp.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		cp.NodeNames = append(cp.NodeNames, name)
	}
	return tick.Until(ctx, 90*time.Second, 100*time.Millisecond, func() error {
		nodes, err := cp.Admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Items {
			if len(n.Spec.Taints) > 0 {
				return fmt.Errorf("node %s tainted %v", n.Name, n.Spec.Taints)
			}
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready != cp.Nodes {
			return fmt.Errorf("%d of %d nodes ready", ready, cp.Nodes)
		}
		if _, err := cp.Admin.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("default service account: %w", err)
		}
		return nil
	})
}

func (cp *ControlPlane) run(name string, args ...string) error {
	logPath := filepath.Join(cp.Dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(cp.Bin, name), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = cp.Dir
	// Killed with the test binary if it dies before Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	cp.procs = append(cp.procs, p)
	return nil
}

// PIDs are the processes this control plane started (running or not).
func (cp *ControlPlane) PIDs() []int {
	var out []int
	for _, p := range cp.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}

// Stop ends every process Start started, by PID, newest first: SIGTERM,
// then SIGKILL after 15 s. It returns once all have exited.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// Exited reports the processes that ended while they should run.
func (cp *ControlPlane) Exited() error {
	var errs []error
	for _, p := range cp.procs {
		select {
		case <-p.done:
			errs = append(errs, fmt.Errorf("%s (pid %d) exited: %v", p.name, p.cmd.Process.Pid, p.err))
		default:
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists the live processes whose command line mentions dir: after
// Stop there must be none.
func Leftovers(dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
				continue // exited, reaped by its parent soon
			}
		}
		out = append(out, fmt.Sprintf("pid %d: %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
	}
	return out
}

// LogTail is the end of a component's log.
func (cp *ControlPlane) LogTail(name string, n int) string {
	b, err := os.ReadFile(filepath.Join(cp.Dir, name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (cp *ControlPlane) logTails() string {
	var sb strings.Builder
	for _, p := range cp.procs {
		fmt.Fprintf(&sb, "\n--- %s (%s) ---\n%s", p.name, p.log, cp.LogTail(p.name, 15))
	}
	return sb.String()
}

func (cp *ControlPlane) waitHTTP(ctx context.Context, what, url string, hdr map[string]string) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CA)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	return tick.Until(ctx, 90*time.Second, 100*time.Millisecond, func() error {
		if err := cp.Exited(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", what, url, resp.Status)
		}
		return nil
	})
}

type pki struct {
	caPEM                                       []byte
	caCert, serverCert, serverKey, saKey, saPub string
	tokens                                      string
	token                                       map[string]string
}

// writePKI makes the control plane's CA, the apiserver's serving
// certificate, the service-account signing key pair and a static token
// file for the admin and the components, all with Go's crypto.
func writePKI(dir string) (*pki, error) {
	p := &pki{
		caCert: filepath.Join(dir, "ca.crt"), serverCert: filepath.Join(dir, "apiserver.crt"), serverKey: filepath.Join(dir, "apiserver.key"),
		saKey: filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"), tokens: filepath.Join(dir, "tokens.csv"),
		token: map[string]string{},
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "roam-test-k8s-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caParsed, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caParsed, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		p.caCert:     p.caPEM,
		p.serverCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
	}
	for path, k := range map[string]*ecdsa.PrivateKey{p.serverKey: srvKey, p.saKey: saKey} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		files[path] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	files[p.saPub] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	// token,user,uid,"group": the components by the user names the
	// apiserver's bootstrap RBAC binds; kwok stands in for every kubelet
	// and runs as an admin.
	var csv strings.Builder
	for _, u := range []struct{ who, user, group string }{
		{"admin", "roam-test-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kwok", "kwok", "system:masters"},
	} {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		p.token[u.who] = hex.EncodeToString(b)
		fmt.Fprintf(&csv, "%s,%s,%s", p.token[u.who], u.user, u.user)
		if u.group != "" {
			fmt.Fprintf(&csv, ",%q", u.group)
		}
		csv.WriteString("\n")
	}
	files[p.tokens] = []byte(csv.String())
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// ServiceAccountToken asks the apiserver (TokenRequest) for a token of a
// ServiceAccount, the credentials a pod running as it would hold.
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, ns, name string) (string, error) {
	var tok string
	err := tick.Until(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		hour := int64(3600)
		req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &hour}}
		tr, err := cp.Admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, req, metav1.CreateOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("service account %s/%s: %w", ns, name, err)
			}
			return err
		}
		tok = tr.Status.Token
		return nil
	})
	return tok, err
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
