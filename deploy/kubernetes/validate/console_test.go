package validate

import (
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// TestConsoleManifests renders deploy/kubernetes/console (the support console, issue 21) and checks
// that it runs `mailworker console` hardened like the other components, as one replica (sessions
// are revoked in the process's memory), that its NATS block is the others' (TLS with the mounted
// CA, user "console"), that its secrets are mounted where the config reads them, and that the
// Service and NetworkPolicy reach its port and let it reach DNS, NATS and Entra only.
func TestConsoleManifests(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), "../console")
	if err != nil {
		t.Fatalf("kustomize build ../console: %v", err)
	}
	var (
		dep    *appsv1.Deployment
		cm     *corev1.ConfigMap
		svc    *corev1.Service
		netpol *networkingv1.NetworkPolicy
	)
	for _, res := range resMap.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var target any
		switch gvk := res.GetGvk(); gvk.Kind {
		case "Deployment":
			dep = &appsv1.Deployment{}
			target = dep
		case "ConfigMap":
			cm = &corev1.ConfigMap{}
			target = cm
		case "Service":
			svc = &corev1.Service{}
			target = svc
		case "NetworkPolicy":
			netpol = &networkingv1.NetworkPolicy{}
			target = netpol
		case "ServiceAccount":
			target = &corev1.ServiceAccount{}
		default:
			t.Errorf("unexpected resource %s %s", gvk.Kind, res.GetName())
			continue
		}
		if err := strict(doc, target); err != nil {
			t.Fatalf("%s %s: strict decode: %v", res.GetGvk().Kind, res.GetName(), err)
		}
	}
	if dep == nil || cm == nil || svc == nil || netpol == nil {
		t.Fatal("want a Deployment, a ConfigMap, a Service and a NetworkPolicy")
	}

	ps := dep.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	if strings.Join(c.Args, " ") != "console" {
		t.Errorf("args %v, want [console]", c.Args)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Error("the console must run as one replica, recreated on rollout: sign-out revokes sessions in its memory")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot ||
		c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem ||
		c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Error("the console pod must run as non-root, read-only root filesystem, no privilege escalation")
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("the service account token must not be mounted")
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Error("probes must check /healthz")
	}
	var port int32
	for _, p := range c.Ports {
		if p.Name == "http" {
			port = p.ContainerPort
		}
	}
	if port == 0 || port < 1024 {
		t.Fatalf("container port http %d: want an unprivileged port", port)
	}
	passwordFromSecret := false
	for _, e := range c.Env {
		if e.Name == "MAILWORKER_NATS_PASSWORD" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			passwordFromSecret = true
		}
	}
	if !passwordFromSecret {
		t.Error("the NATS password must come from a Secret (env MAILWORKER_NATS_PASSWORD)")
	}

	var cfg struct {
		NATS struct {
			URL         string `json:"url"`
			User        string `json:"user"`
			Password    string `json:"password"`
			InboxPrefix string `json:"inboxPrefix"`
			TLS         struct {
				CAFile string `json:"caFile"`
			} `json:"tls"`
		} `json:"nats"`
		Console struct {
			Listen           string `json:"listen"`
			PublicURL        string `json:"publicURL"`
			ClientSecret     string `json:"clientSecret"`
			ClientSecretFile string `json:"clientSecretFile"`
			Secret           string `json:"secret"`
			SecretFile       string `json:"secretFile"`
		} `json:"console"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cfg.NATS.URL, "tls://") || cfg.NATS.TLS.CAFile == "" {
		t.Errorf("nats url %q, caFile %q: want TLS with the CA, as the other components", cfg.NATS.URL, cfg.NATS.TLS.CAFile)
	}
	if cfg.NATS.User != "console" || cfg.NATS.Password != "" || cfg.NATS.InboxPrefix != "_INBOX_console" {
		t.Errorf("nats user %q inboxPrefix %q (password in the file: %v): want user console, _INBOX_console, the password from the environment",
			cfg.NATS.User, cfg.NATS.InboxPrefix, cfg.NATS.Password != "")
	}
	if !strings.HasSuffix(cfg.Console.Listen, ":"+strconv.Itoa(int(port))) {
		t.Errorf("console.listen %q does not match the container port %d", cfg.Console.Listen, port)
	}
	if cfg.Console.ClientSecret != "" || cfg.Console.Secret != "" {
		t.Error("secrets inline in the ConfigMap: use clientSecretFile and secretFile")
	}
	if !strings.HasPrefix(cfg.Console.PublicURL, "https://") {
		t.Errorf("console.publicURL %q: want https (cookies are Secure)", cfg.Console.PublicURL)
	}
	secretOf := map[string]string{}
	for _, v := range ps.Volumes {
		if v.Secret != nil {
			secretOf[v.Name] = v.Secret.SecretName
		}
	}
	mounted := func(file, secret string) {
		t.Helper()
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(file, m.MountPath+"/") && secretOf[m.Name] == secret && m.SubPath == "" {
				return
			}
		}
		t.Errorf("%s is not mounted from Secret %s", file, secret)
	}
	mounted(cfg.NATS.TLS.CAFile, "nats-ca")
	mounted(cfg.Console.ClientSecretFile, "mailworker-console")
	mounted(cfg.Console.SecretFile, "mailworker-console")

	podLabels := dep.Spec.Template.Labels
	if !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, podLabels) {
		t.Error("the Service does not select the console's pods")
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("the Service must target the http port: %+v", svc.Spec.Ports)
	}
	if !selects(&netpol.Spec.PodSelector, podLabels) {
		t.Error("the NetworkPolicy does not select the console's pods")
	}
	ingressHTTP := false
	for _, r := range netpol.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.String() == "http" {
				ingressHTTP = true
			}
		}
	}
	egress := map[string]bool{}
	for _, r := range netpol.Spec.Egress {
		for _, p := range r.Ports {
			if p.Port != nil {
				egress[p.Port.String()] = true
			}
		}
	}
	if !ingressHTTP || !egress["53"] || !egress["4222"] || !egress["443"] || len(egress) != 3 {
		t.Errorf("NetworkPolicy: ingress http %v, egress ports %v: want http in; DNS, NATS 4222 and 443 (Entra) out, nothing else", ingressHTTP, egress)
	}
}
