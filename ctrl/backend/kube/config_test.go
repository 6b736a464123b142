package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: ctx
  context: {cluster: c, user: u, namespace: from-kubeconfig}
current-context: ctx
`

func TestConstructors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvNamespace, "")
	t.Setenv(EnvServiceType, "")
	b, err := NewFromKubeconfig(p, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if b.cfg.Namespace != "from-kubeconfig" || b.cfg.ServiceType != corev1.ServiceTypeNodePort {
		t.Fatalf("config: %+v", b.cfg)
	}
	t.Setenv(EnvNamespace, "roam-services")
	t.Setenv(EnvServiceType, "LoadBalancer")
	if b, err = NewFromKubeconfig(p, Config{}); err != nil || b.cfg.Namespace != "roam-services" || b.cfg.ServiceType != corev1.ServiceTypeLoadBalancer {
		t.Fatalf("from env: %+v %v", b, err)
	}
	if b, err = NewFromKubeconfig(p, Config{Namespace: "explicit"}); err != nil || b.cfg.Namespace != "explicit" {
		t.Fatalf("explicit: %+v %v", b, err)
	}
	t.Setenv(EnvServiceType, "ExternalName")
	if _, err := NewFromKubeconfig(p, Config{}); err == nil || !strings.Contains(err.Error(), "NodePort or LoadBalancer") {
		t.Fatalf("bad service type: %v", err)
	}
	if _, err := NewFromKubeconfig(filepath.Join(t.TempDir(), "missing"), Config{}); err == nil {
		t.Fatal("missing kubeconfig accepted")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := NewInCluster(Config{}); err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Fatalf("in-cluster outside a pod: %v", err)
	}
}
