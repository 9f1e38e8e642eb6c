package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The names below are fixed by the README (Configuration); the manifests must agree with them.
const (
	jobsStreamPrefix = "MAIL_JOBS_"
	deferStream      = "MAIL_DEFER"
	consumerName     = "mailworker"
	httpPort         = 8080
	configPath       = "/etc/mailworker/config.yaml"
	defaultDrain     = 25 * time.Second
	deploymentName   = "mailworker"
)

// targets are the kustomizations rendered and checked. Each must render to the full set of kinds.
var targets = []string{
	"../base",
	"../overlays/example",
	"../overlays/example-workload-identity",
}

// strict decodes YAML into out, rejecting fields that out does not know.
func strict(doc []byte, out any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return err
	}
	return nil
}

// scaledObject mirrors the parts of keda.sh/v1alpha1 ScaledObject used here (KEDA 2.x);
// unknown fields fail the strict decode.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion             string `json:"apiVersion"`
			Kind                   string `json:"kind"`
			Name                   string `json:"name"`
			EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		IdleReplicaCnt  *int32 `json:"idleReplicaCount,omitempty"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		Advanced        *struct {
			RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
			HPAConfig                     *struct {
				Name     string                                         `json:"name,omitempty"`
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name,omitempty"`
			MetricType        string            `json:"metricType,omitempty"`
			UseCachedMetrics  bool              `json:"useCachedMetrics,omitempty"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
				Kind string `json:"kind,omitempty"`
			} `json:"authenticationRef,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

// natsJetStreamMetadata is the metadata KEDA's nats-jetstream scaler reads.
var natsJetStreamMetadata = map[string]bool{
	"natsServerMonitoringEndpoint": true, "account": true, "stream": true, "consumer": true,
	"lagThreshold": true, "activationLagThreshold": true, "useHttps": true,
}

// serviceMonitor mirrors monitoring.coreos.com/v1 ServiceMonitor (the fields used here).
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// workerConfig mirrors the config file keys of the README (Configuration), decoded strictly so that a misspelt
// key in a ConfigMap fails here rather than being silently ignored at run time.
type workerConfig struct {
	NATS struct {
		URL            string `json:"url"`
		CredsFile      string `json:"credsFile"`
		NkeySeedFile   string `json:"nkeySeedFile"`
		User           string `json:"user"`
		Password       string `json:"password"`
		Token          string `json:"token"`
		ConnectTimeout string `json:"connectTimeout"`
		InboxPrefix    string `json:"inboxPrefix"`
		TLS            struct {
			CAFile   string `json:"caFile"`
			CertFile string `json:"certFile"`
			KeyFile  string `json:"keyFile"`
		} `json:"tls"`
	} `json:"nats"`
	Streams struct {
		Replicas     int    `json:"replicas"`
		JobsMaxAge   string `json:"jobsMaxAge"`
		StatusMaxAge string `json:"statusMaxAge"`
		DLQMaxAge    string `json:"dlqMaxAge"`
		StateTTL     string `json:"stateTTL"`
		Provision    *bool  `json:"provision"`
	} `json:"streams"`
	Worker struct {
		Concurrency           int    `json:"concurrency"`
		MaxInFlight           int    `json:"maxInFlight"`
		PerMailboxConcurrency int    `json:"perMailboxConcurrency"`
		PerMailboxPerMinute   int    `json:"perMailboxPerMinute"`
		PerMailboxRcptPerDay  *int   `json:"perMailboxRecipientsPerDay"`
		MaxAttempts           int    `json:"maxAttempts"`
		BackoffInitial        string `json:"backoffInitial"`
		BackoffMax            string `json:"backoffMax"`
		AckWait               string `json:"ackWait"`
		SendTimeout           string `json:"sendTimeout"`
		DrainTimeout          string `json:"drainTimeout"`
	} `json:"worker"`
	HTTP struct {
		Listen string `json:"listen"`
	} `json:"http"`
	Log struct {
		Level      string `json:"level"`
		Format     string `json:"format"`
		Recipients bool   `json:"recipients"`
	} `json:"log"`
	Profiles map[string]struct {
		TenantID      string `json:"tenantId"`
		ClientID      string `json:"clientId"`
		Cloud         string `json:"cloud"`
		AuthorityHost string `json:"authorityHost"`
		GraphURL      string `json:"graphURL"`
		CAFile        string `json:"caFile"`
		Credential    struct {
			CertificateFile     string `json:"certificateFile"`
			CertificatePassword string `json:"certificatePassword"`
			ClientSecret        string `json:"clientSecret"`
			ClientSecretFile    string `json:"clientSecretFile"`
			FederatedTokenFile  string `json:"federatedTokenFile"`
		} `json:"credential"`
		AllowedSenders  []string `json:"allowedSenders"`
		OnAmbiguous     string   `json:"onAmbiguous"`
		SaveToSentItems bool     `json:"saveToSentItems"`
	} `json:"profiles"`
}

// rendered holds one kustomization's output, decoded.
type rendered struct {
	deployment     *appsv1.Deployment
	configMap      *corev1.ConfigMap
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	netpol         *networkingv1.NetworkPolicy
	scaled         *scaledObject
	monitor        *serviceMonitor
}

func render(t *testing.T, dir string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var r rendered
	seen := map[string]bool{}
	for _, res := range resMap.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		gvk := res.GetGvk()
		key := gvk.ApiVersion() + "/" + gvk.Kind
		if seen[key] {
			t.Errorf("more than one %s", key)
		}
		seen[key] = true
		var target any
		switch key {
		case "apps/v1/Deployment":
			r.deployment = &appsv1.Deployment{}
			target = r.deployment
		case "v1/ConfigMap":
			r.configMap = &corev1.ConfigMap{}
			target = r.configMap
		case "v1/Service":
			r.service = &corev1.Service{}
			target = r.service
		case "v1/ServiceAccount":
			r.serviceAccount = &corev1.ServiceAccount{}
			target = r.serviceAccount
		case "policy/v1/PodDisruptionBudget":
			r.pdb = &policyv1.PodDisruptionBudget{}
			target = r.pdb
		case "networking.k8s.io/v1/NetworkPolicy":
			r.netpol = &networkingv1.NetworkPolicy{}
			target = r.netpol
		case "keda.sh/v1alpha1/ScaledObject":
			r.scaled = &scaledObject{}
			target = r.scaled
		case "monitoring.coreos.com/v1/ServiceMonitor":
			r.monitor = &serviceMonitor{}
			target = r.monitor
		default:
			t.Errorf("unexpected resource %s %s", key, res.GetName())
			continue
		}
		if err := strict(doc, target); err != nil {
			t.Errorf("%s %s: strict decode: %v", key, res.GetName(), err)
		}
	}
	return r
}

func TestKustomizationsStrict(t *testing.T) {
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var k kusttypes.Kustomization
		if err := strict(b, &k); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestManifests(t *testing.T) {
	for _, dir := range targets {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			r := render(t, dir)
			for name, present := range map[string]bool{
				"Deployment": r.deployment != nil, "ConfigMap": r.configMap != nil,
				"Service": r.service != nil, "ServiceAccount": r.serviceAccount != nil,
				"PodDisruptionBudget": r.pdb != nil, "NetworkPolicy": r.netpol != nil,
				"ScaledObject": r.scaled != nil, "ServiceMonitor": r.monitor != nil,
			} {
				if !present {
					t.Errorf("no valid %s rendered", name)
				}
			}
			if t.Failed() {
				t.FailNow()
			}
			checkDeployment(t, r)
			checkConfig(t, r)
			checkService(t, r)
			checkNetworkPolicy(t, r)
			checkScaledObject(t, r)
			checkPDB(t, r)
			checkMailboxBudget(t, r)
		})
	}
}

func container(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == "mailworker" {
			return &d.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("no container named mailworker")
	return nil
}

func checkDeployment(t *testing.T, r rendered) {
	d := r.deployment
	if d.Name != deploymentName {
		t.Errorf("deployment name %q, want %q", d.Name, deploymentName)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("deployment sets replicas: the KEDA ScaledObject owns the replica count")
	}
	ps := d.Spec.Template.Spec
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
		t.Errorf("pod securityContext.runAsNonRoot must be true")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsUser == nil || *ps.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod securityContext.runAsUser must be a non-zero UID")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.SeccompProfile == nil ||
		ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile must be RuntimeDefault")
	}
	c := container(t, d)
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatalf("container has no securityContext")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("container readOnlyRootFilesystem must be true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("container allowPrivilegeEscalation must be false")
	case sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot:
		t.Errorf("container overrides runAsNonRoot to false")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
		t.Errorf("container capabilities must drop ALL and add none")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("container needs cpu/memory requests and a memory limit")
	}
	var httpNamed bool
	for _, p := range c.Ports {
		if p.Name == "http" && p.ContainerPort == httpPort {
			httpNamed = true
		}
	}
	if !httpNamed {
		t.Errorf("container port http=%d missing", httpPort)
	}
	probe := func(name string, p *corev1.Probe, path string) {
		switch {
		case p == nil || p.HTTPGet == nil:
			t.Errorf("%s probe must be an httpGet", name)
		case p.HTTPGet.Path != path:
			t.Errorf("%s probe path %q, want %q", name, p.HTTPGet.Path, path)
		case p.HTTPGet.Port.String() != "http" && p.HTTPGet.Port.IntValue() != httpPort:
			t.Errorf("%s probe port %s, want http (%d)", name, p.HTTPGet.Port.String(), httpPort)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")

	var cfgEnv string
	for _, e := range c.Env {
		if e.Name == "MAILWORKER_CONFIG" {
			cfgEnv = e.Value
		}
	}
	if cfgEnv != configPath {
		t.Errorf("MAILWORKER_CONFIG=%q, want %q", cfgEnv, configPath)
	}
	// The config file is mounted from the ConfigMap.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	var cfgMounted bool
	for _, v := range ps.Volumes {
		m, ok := mounts[v.Name]
		if !ok {
			continue
		}
		if v.ConfigMap != nil && v.ConfigMap.Name == r.configMap.Name && m.MountPath == filepath.Dir(configPath) {
			cfgMounted = true
		}
		if (v.Secret != nil || v.ConfigMap != nil || v.Projected != nil) && !m.ReadOnly {
			t.Errorf("volume %s mounted read-write at %s", v.Name, m.MountPath)
		}
	}
	if !cfgMounted {
		t.Errorf("ConfigMap %s not mounted at %s", r.configMap.Name, filepath.Dir(configPath))
	}
}

// mountedPaths lists the directories a container can read files from, besides the image:
// its volume mounts, plus the Azure Workload Identity token directory when the pod opts in
// (the webhook adds that mount at admission).
func mountedPaths(d *appsv1.Deployment, c *corev1.Container) []string {
	var out []string
	for _, m := range c.VolumeMounts {
		out = append(out, m.MountPath)
	}
	if d.Spec.Template.Labels["azure.workload.identity/use"] == "true" {
		out = append(out, "/var/run/secrets/azure/tokens")
	}
	return out
}

func under(path string, dirs []string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(path, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

func checkConfig(t *testing.T, r rendered) {
	raw, ok := r.configMap.Data[filepath.Base(configPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", r.configMap.Name, filepath.Base(configPath))
	}
	var cfg workerConfig
	if err := strict([]byte(raw), &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	drain := defaultDrain
	if cfg.Worker.DrainTimeout != "" {
		var err error
		if drain, err = time.ParseDuration(cfg.Worker.DrainTimeout); err != nil {
			t.Fatalf("worker.drainTimeout: %v", err)
		}
	}
	grace := r.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil {
		t.Errorf("terminationGracePeriodSeconds unset (default 30s): set it above worker.drainTimeout (%v)", drain)
	} else if g := time.Duration(*grace) * time.Second; g <= drain {
		t.Errorf("terminationGracePeriodSeconds (%v) must exceed worker.drainTimeout (%v)", g, drain)
	}
	for _, s := range []struct{ key, v string }{
		{"nats.connectTimeout", cfg.NATS.ConnectTimeout}, {"streams.jobsMaxAge", cfg.Streams.JobsMaxAge},
		{"streams.statusMaxAge", cfg.Streams.StatusMaxAge}, {"streams.dlqMaxAge", cfg.Streams.DLQMaxAge},
		{"streams.stateTTL", cfg.Streams.StateTTL}, {"worker.backoffInitial", cfg.Worker.BackoffInitial},
		{"worker.backoffMax", cfg.Worker.BackoffMax}, {"worker.ackWait", cfg.Worker.AckWait},
		{"worker.sendTimeout", cfg.Worker.SendTimeout},
	} {
		if s.v == "" {
			continue
		}
		if _, err := time.ParseDuration(s.v); err != nil {
			t.Errorf("%s: %v", s.key, err)
		}
	}
	if cfg.Streams.Replicas != 0 && cfg.Streams.Replicas != 1 && cfg.Streams.Replicas != 3 {
		t.Errorf("streams.replicas=%d, want 1 or 3", cfg.Streams.Replicas)
	}
	if cfg.HTTP.Listen != "" && !strings.HasSuffix(cfg.HTTP.Listen, fmt.Sprintf(":%d", httpPort)) {
		t.Errorf("http.listen %q does not match container port %d", cfg.HTTP.Listen, httpPort)
	}
	if cfg.Worker.PerMailboxConcurrency > 4 {
		t.Errorf("worker.perMailboxConcurrency=%d exceeds the Outlook limit of 4", cfg.Worker.PerMailboxConcurrency)
	}
	if cfg.Worker.PerMailboxPerMinute > 30 {
		t.Errorf("worker.perMailboxPerMinute=%d exceeds the Exchange limit of 30", cfg.Worker.PerMailboxPerMinute)
	}
	if len(cfg.Profiles) == 0 {
		t.Errorf("config has no profile")
	}
	c := container(t, r.deployment)
	paths := mountedPaths(r.deployment, c)
	for name, p := range cfg.Profiles {
		if p.TenantID == "" || p.ClientID == "" || len(p.AllowedSenders) == 0 {
			t.Errorf("profile %s: tenantId, clientId and allowedSenders are required", name)
		}
		if p.Credential.ClientSecret != "" {
			t.Errorf("profile %s: clientSecret inline in a ConfigMap; use a Secret file or env", name)
		}
		files := []string{p.Credential.CertificateFile, p.Credential.ClientSecretFile, p.Credential.FederatedTokenFile}
		var n int
		for _, f := range files {
			if f == "" {
				continue
			}
			n++
			if !under(f, paths) {
				t.Errorf("profile %s: credential file %s is not under any volume mount %v", name, f, paths)
			}
		}
		if n != 1 {
			t.Errorf("profile %s: want exactly one credential file, have %d", name, n)
		}
	}
	if !strings.HasPrefix(cfg.NATS.URL, "tls://") || cfg.NATS.TLS.CAFile == "" || !under(cfg.NATS.TLS.CAFile, paths) {
		t.Errorf("nats.url %q / nats.tls.caFile %q: want tls:// and a CA file under a volume mount", cfg.NATS.URL, cfg.NATS.TLS.CAFile)
	}
	if cfg.Streams.Provision == nil || *cfg.Streams.Provision {
		t.Errorf("streams.provision must be false: the worker's NATS user cannot create or update streams")
	}
	if cfg.NATS.Password != "" || cfg.NATS.Token != "" {
		t.Errorf("NATS password/token inline in a ConfigMap; set MAILWORKER_NATS_PASSWORD from a Secret")
	}
	for _, f := range []string{cfg.NATS.CredsFile, cfg.NATS.NkeySeedFile} {
		if f != "" && !under(f, paths) {
			t.Errorf("NATS credential %s is not under any volume mount", f)
		}
	}
}

func checkService(t *testing.T, r rendered) {
	tmpl := r.deployment.Spec.Template.Labels
	for k, v := range r.service.Spec.Selector {
		if tmpl[k] != v {
			t.Errorf("service selector %s=%s does not match the pod template", k, v)
		}
	}
	if len(r.service.Spec.Selector) == 0 {
		t.Errorf("service has no selector")
	}
	var port bool
	for _, p := range r.service.Spec.Ports {
		if p.Name == "http" && (p.TargetPort.String() == "http" || p.TargetPort.IntValue() == httpPort) {
			port = true
		}
	}
	if !port {
		t.Errorf("service has no port named http targeting the container's http port")
	}
	m := r.monitor
	for k, v := range m.Spec.Selector.MatchLabels {
		if r.service.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not match the Service labels", k, v)
		}
	}
	if len(m.Spec.Endpoints) == 0 || m.Spec.Endpoints[0].Port != "http" || m.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor must scrape port http path /metrics")
	}
}

func selects(sel *metav1.LabelSelector, labels map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(k8slabels.Set(labels))
}

func checkNetworkPolicy(t *testing.T, r rendered) {
	np := r.netpol
	if !selects(&np.Spec.PodSelector, r.deployment.Spec.Template.Labels) {
		t.Errorf("NetworkPolicy podSelector does not select the worker pods")
	}
	var hasEgress bool
	for _, pt := range np.Spec.PolicyTypes {
		if pt == networkingv1.PolicyTypeEgress {
			hasEgress = true
		}
	}
	if !hasEgress {
		t.Errorf("NetworkPolicy must restrict egress")
	}
	allowed := map[int]bool{53: true, 4222: true, 443: true}
	seen := map[int]bool{}
	for _, rule := range np.Spec.Egress {
		if len(rule.Ports) == 0 {
			t.Errorf("egress rule without ports allows everything")
		}
		for _, p := range rule.Ports {
			if p.Port == nil || p.EndPort != nil || !allowed[p.Port.IntValue()] {
				t.Errorf("egress port %v not in {53, 4222, 443}", p.Port)
				continue
			}
			seen[p.Port.IntValue()] = true
			if p.Port.IntValue() == 53 {
				for _, peer := range rule.To {
					if peer.PodSelector == nil || len(peer.PodSelector.MatchLabels) != 1 || peer.PodSelector.MatchLabels["k8s-app"] != "kube-dns" {
						t.Errorf("DNS egress peer must select exactly k8s-app=kube-dns, got %v", peer.PodSelector)
					}
				}
			}
		}
	}
	for p := range allowed {
		if !seen[p] {
			t.Errorf("egress to port %d missing", p)
		}
	}
	// NATS only to the nats pods; 443 never to private or link-local addresses.
	for _, rule := range np.Spec.Egress {
		for _, p := range rule.Ports {
			switch p.Port.IntValue() {
			case 4222:
				if len(rule.To) == 0 {
					t.Errorf("egress to 4222 open to any address, want the nats pods only")
				}
				for _, peer := range rule.To {
					if peer.PodSelector == nil || peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchLabels) == 0 {
						t.Errorf("egress to 4222 must select the nats pods of one namespace, got %+v", peer)
					}
				}
			case 443:
				if len(rule.To) == 0 {
					t.Errorf("egress to 443 open to any address, want public addresses only")
				}
				for _, peer := range rule.To {
					ex := map[string]bool{}
					if peer.IPBlock != nil {
						for _, e := range peer.IPBlock.Except {
							ex[e] = true
						}
					}
					for _, want := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} {
						if !ex[want] {
							t.Errorf("egress to 443 does not exclude %s", want)
						}
					}
				}
			}
		}
	}
	// Metrics only from the monitoring namespace.
	if len(np.Spec.Ingress) == 0 {
		t.Errorf("no ingress rule for the metrics scrape")
	}
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Errorf("ingress open to every pod, want the monitoring namespace only")
		}
		for _, peer := range rule.From {
			if peer.NamespaceSelector == nil || peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" {
				t.Errorf("ingress peer %+v, want namespace monitoring", peer)
			}
		}
	}
}

func checkScaledObject(t *testing.T, r rendered) {
	s := r.scaled
	ref := s.Spec.ScaleTargetRef
	if ref.Name != r.deployment.Name || (ref.Kind != "" && ref.Kind != "Deployment") {
		t.Errorf("ScaledObject targets %s/%s, want Deployment/%s", ref.Kind, ref.Name, r.deployment.Name)
	}
	if s.Spec.MinReplicaCount == nil || s.Spec.MaxReplicaCount == nil || *s.Spec.MinReplicaCount > *s.Spec.MaxReplicaCount {
		t.Errorf("ScaledObject needs minReplicaCount <= maxReplicaCount")
	}
	// Per profile of the config: its stream's consumer and its due
	// deferrals' consumer on MAIL_DEFER, each one trigger.
	var cfg workerConfig
	if err := strict([]byte(r.configMap.Data[filepath.Base(configPath)]), &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	want := map[string]bool{}
	for p := range cfg.Profiles {
		want[jobsStreamPrefix+p+"/"+consumerName] = true
		want[deferStream+"/"+consumerName+"_"+p] = true
	}
	have := map[string]bool{}
	for _, tr := range s.Spec.Triggers {
		if tr.Type != "nats-jetstream" {
			t.Errorf("trigger type %q, want nats-jetstream", tr.Type)
		}
		for k := range tr.Metadata {
			if !natsJetStreamMetadata[k] {
				t.Errorf("unknown nats-jetstream trigger metadata %q", k)
			}
		}
		for _, k := range []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} {
			if tr.Metadata[k] == "" {
				t.Errorf("trigger metadata %s is required", k)
			}
		}
		w := tr.Metadata["stream"] + "/" + tr.Metadata["consumer"]
		if !want[w] {
			t.Errorf("trigger watches %s: not a consumer of a configured profile", w)
		}
		have[w] = true
	}
	for w := range want {
		if !have[w] {
			t.Errorf("no trigger watches %s: KEDA would not scale for that profile's jobs", w)
		}
	}
}

func checkPDB(t *testing.T, r rendered) {
	if !selects(r.pdb.Spec.Selector, r.deployment.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget does not select the worker pods")
	}
	if r.pdb.Spec.MinAvailable != nil {
		t.Errorf("use maxUnavailable: minAvailable blocks node drains when KEDA runs one replica")
	}
}

// checkMailboxBudget: Outlook allows 4 concurrent requests per app+mailbox and Exchange 30 messages per minute
// and 10,000 recipients per rolling 24 h per mailbox, all replicas together. The worker shares the settings
// among the live replicas (max(1, floor(setting / live)) each; recipients through a shared ledger), so each
// setting must stay within its limit, and the most replicas KEDA may run must not exceed the concurrency and
// per-minute settings, or the floor of 1 per replica would add up past them.
func checkMailboxBudget(t *testing.T, r rendered) {
	var cfg workerConfig
	if err := strict([]byte(r.configMap.Data[filepath.Base(configPath)]), &cfg); err != nil {
		return // reported by checkConfig
	}
	conc, rate := cfg.Worker.PerMailboxConcurrency, cfg.Worker.PerMailboxPerMinute
	if conc == 0 {
		conc = 4 // README default
	}
	if rate == 0 {
		rate = 30 // README default (0 in the file means the default here; an explicit 0 = unpaced is not allowed)
	}
	if conc > 4 {
		t.Errorf("worker.perMailboxConcurrency %d > 4 concurrent requests per mailbox", conc)
	}
	if rate > 30 {
		t.Errorf("worker.perMailboxPerMinute %d > 30 messages/min per mailbox", rate)
	}
	rcpt := 10000 // default; an explicit 0 turns the check off in the worker, which the budget forbids
	if cfg.Worker.PerMailboxRcptPerDay != nil {
		rcpt = *cfg.Worker.PerMailboxRcptPerDay
	}
	if rcpt == 0 || rcpt > 10000 {
		t.Errorf("worker.perMailboxRecipientsPerDay %d exceeds (or disables) 10,000 recipients/24h per mailbox", rcpt)
	}
	if r.scaled.Spec.MaxReplicaCount == nil {
		return
	}
	maxR := int(*r.scaled.Spec.MaxReplicaCount)
	if maxR > conc || maxR > rate {
		t.Errorf("maxReplicaCount %d > worker.perMailboxConcurrency %d or perMailboxPerMinute %d: each replica takes at least 1, past the limit",
			maxR, conc, rate)
	}
}
