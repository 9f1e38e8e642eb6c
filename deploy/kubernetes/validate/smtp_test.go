package validate

import (
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// TestSMTPIngressManifests renders deploy/kubernetes/smtp (the SMTP ingress, issue 14) and checks
// that it runs `mailworker smtp` hardened like the workers, that the Services and NetworkPolicy
// reach its ports, and that the config points at the mounted Secrets.
func TestSMTPIngressManifests(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), "../smtp")
	if err != nil {
		t.Fatalf("kustomize build ../smtp: %v", err)
	}
	var (
		dep      *appsv1.Deployment
		cm       *corev1.ConfigMap
		services []*corev1.Service
		netpol   *networkingv1.NetworkPolicy
		monitor  *serviceMonitor
	)
	for _, res := range resMap.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := res.GetGvk()
		var target any
		switch gvk.Kind {
		case "Deployment":
			dep = &appsv1.Deployment{}
			target = dep
		case "ConfigMap":
			cm = &corev1.ConfigMap{}
			target = cm
		case "Service":
			s := &corev1.Service{}
			services = append(services, s)
			target = s
		case "NetworkPolicy":
			netpol = &networkingv1.NetworkPolicy{}
			target = netpol
		case "ServiceMonitor":
			monitor = &serviceMonitor{}
			target = monitor
		case "ServiceAccount":
			target = &corev1.ServiceAccount{}
		default:
			t.Errorf("unexpected resource %s %s", gvk.Kind, res.GetName())
			continue
		}
		if err := strict(doc, target); err != nil {
			t.Fatalf("%s %s: strict decode: %v", gvk.Kind, res.GetName(), err)
		}
	}
	if dep == nil || cm == nil || len(services) != 2 || netpol == nil || monitor == nil {
		t.Fatalf("want a Deployment, a ConfigMap, 2 Services, a NetworkPolicy and a ServiceMonitor")
	}

	ps := dep.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	if strings.Join(c.Args, " ") != "smtp" {
		t.Errorf("args %v, want [smtp]", c.Args)
	}
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot ||
		c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the SMTP pod must run as non-root with a read-only root filesystem")
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("the service account token must not be mounted")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
		if p.ContainerPort < 1024 {
			t.Errorf("port %s is privileged (%d): the container runs as non-root", p.Name, p.ContainerPort)
		}
	}

	// The config listens on the container ports and reads the mounted Secrets.
	var cfg struct {
		SMTP struct {
			Listen, TLSListen, CertFile, KeyFile, CredentialsFile string
		} `json:"smtp"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{cfg.SMTP.Listen: "submission", cfg.SMTP.TLSListen: "submissions"} {
		if !strings.HasSuffix(key, ":"+strconv.Itoa(int(ports[want]))) {
			t.Errorf("smtp listen %q does not match container port %s (%d)", key, want, ports[want])
		}
	}
	secretOf := map[string]string{}
	for _, v := range ps.Volumes {
		if v.Secret != nil {
			secretOf[v.Name] = v.Secret.SecretName
		}
	}
	mounted := func(file, secret string) {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(file, m.MountPath+"/") && secretOf[m.Name] == secret && m.SubPath == "" {
				return
			}
		}
		t.Errorf("%s is not in a directory mount of Secret %s (a subPath mount would not see updates)", file, secret)
	}
	mounted(cfg.SMTP.CertFile, "mailworker-smtp-tls")
	mounted(cfg.SMTP.KeyFile, "mailworker-smtp-tls")
	mounted(cfg.SMTP.CredentialsFile, "mailworker-smtp-credentials")
	if !strings.HasSuffix(cfg.SMTP.CertFile, "/tls.crt") || !strings.HasSuffix(cfg.SMTP.KeyFile, "/tls.key") {
		t.Error("certFile/keyFile must be the tls.crt/tls.key keys of a kubernetes.io/tls Secret (cert-manager)")
	}

	podLabels := k8slabels.Set(dep.Spec.Template.Labels)
	for _, s := range services {
		if !k8slabels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s does not select the SMTP pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.StrVal]; !ok {
				t.Errorf("Service %s targets port %q, which the container does not name", s.Name, p.TargetPort.StrVal)
			}
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("Service %s: externalTrafficPolicy Local keeps client addresses for allowFrom", s.Name)
		}
	}
	sel, err := metav1.LabelSelectorAsSelector(&netpol.Spec.PodSelector)
	if err != nil || !sel.Matches(podLabels) {
		t.Error("the NetworkPolicy does not select the SMTP pods")
	}
	in := map[string]bool{}
	for _, r := range netpol.Spec.Ingress {
		for _, p := range r.Ports {
			in[p.Port.String()] = true
		}
	}
	for _, want := range []string{"submission", "submissions", "http"} {
		if !in[want] {
			t.Errorf("the NetworkPolicy does not admit port %s", want)
		}
	}
	for _, r := range netpol.Spec.Egress {
		for _, p := range r.Ports {
			if p.Port.IntValue() == 443 {
				t.Error("the SMTP ingress needs no HTTPS egress (it never calls Entra or Graph)")
			}
		}
	}
}
