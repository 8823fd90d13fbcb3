package kubernetes_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The types below mirror the parts of the Kubernetes API the example
// uses, key for key; fields the tests do not check are not declared and
// are ignored when decoding.

type objectMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type labelSelector struct {
	MatchLabels      map[string]string `yaml:"matchLabels"`
	MatchExpressions []any             `yaml:"matchExpressions"`
}

// selects reports whether the selector selects an object with labels. An
// empty selector selects everything.
func (s labelSelector) selects(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// portRef is an IntOrString port: a number or a container port's name.
type portRef string

func (p *portRef) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a port number or name", n.Line)
	}
	*p = portRef(n.Value)
	return nil
}

type manifest struct {
	file       string
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	BinaryData map[string]string `yaml:"binaryData"`
	StringData map[string]string `yaml:"stringData"`
	Spec       yaml.Node         `yaml:"spec"`
}

func (m manifest) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", m.Kind, m.Metadata.Namespace, m.Metadata.Name, m.file)
}

type deploymentSpec struct {
	Replicas *int          `yaml:"replicas"`
	Selector labelSelector `yaml:"selector"`
	Template struct {
		Metadata objectMeta `yaml:"metadata"`
		Spec     podSpec    `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
	AutomountServiceAccountToken  *bool       `yaml:"automountServiceAccountToken"`
	SecurityContext               podSecurity `yaml:"securityContext"`
	InitContainers                []container `yaml:"initContainers"`
	Containers                    []container `yaml:"containers"`
	Volumes                       []volume    `yaml:"volumes"`
}

type podSecurity struct {
	RunAsNonRoot *bool `yaml:"runAsNonRoot"`
	RunAsUser    *int  `yaml:"runAsUser"`
	FSGroup      *int  `yaml:"fsGroup"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
			ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		SecretRef    *keyRef `yaml:"secretRef"`
		ConfigMapRef *keyRef `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	StartupProbe   *probe `yaml:"startupProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Privileged               *bool `yaml:"privileged"`
		Capabilities             struct {
			Add  []string `yaml:"add"`
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

// containerPort resolves a probe's or Service's port (number or name) to
// one of the container's ports; 0 when it has no such port.
func (c container) containerPort(p portRef) int {
	for _, cp := range c.Ports {
		if string(p) == cp.Name || string(p) == strconv.Itoa(cp.ContainerPort) {
			return cp.ContainerPort
		}
	}
	return 0
}

type keyRef struct {
	Name     string `yaml:"name"`
	Key      string `yaml:"key"`
	Optional *bool  `yaml:"optional"`
}

type probe struct {
	HTTPGet *struct {
		Path string  `yaml:"path"`
		Port portRef `yaml:"port"`
	} `yaml:"httpGet"`
	TCPSocket *struct {
		Port portRef `yaml:"port"`
	} `yaml:"tcpSocket"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
}

func (p *probe) port() portRef {
	switch {
	case p.HTTPGet != nil:
		return p.HTTPGet.Port
	case p.TCPSocket != nil:
		return p.TCPSocket.Port
	}
	return ""
}

type keyToPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
	Mode *int   `yaml:"mode"`
}

type objectVolume struct {
	Name       string      `yaml:"name"`       // ConfigMap, or a projected Secret
	SecretName string      `yaml:"secretName"` // Secret volume
	Items      []keyToPath `yaml:"items"`
	Optional   *bool       `yaml:"optional"`
}

type volume struct {
	Name      string        `yaml:"name"`
	ConfigMap *objectVolume `yaml:"configMap"`
	Secret    *objectVolume `yaml:"secret"`
	Projected *struct {
		Sources []struct {
			ConfigMap *objectVolume `yaml:"configMap"`
			Secret    *objectVolume `yaml:"secret"`
		} `yaml:"sources"`
	} `yaml:"projected"`
	EmptyDir *struct{} `yaml:"emptyDir"`
}

// volumeRef is a ConfigMap or Secret a volume projects.
type volumeRef struct {
	kind string
	objectVolume
}

// refs lists the ConfigMaps and Secrets the volume projects.
func (v volume) refs() []volumeRef {
	var out []volumeRef
	add := func(kind string, o *objectVolume) {
		if o == nil {
			return
		}
		ref := volumeRef{kind: kind, objectVolume: *o}
		if kind == "Secret" && o.SecretName != "" {
			ref.Name = o.SecretName
		}
		out = append(out, ref)
	}
	add("ConfigMap", v.ConfigMap)
	add("Secret", v.Secret)
	if v.Projected != nil {
		for _, s := range v.Projected.Sources {
			add("ConfigMap", s.ConfigMap)
			add("Secret", s.Secret)
		}
	}
	return out
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Name       string  `yaml:"name"`
		Port       int     `yaml:"port"`
		TargetPort portRef `yaml:"targetPort"`
		Protocol   string  `yaml:"protocol"`
	} `yaml:"ports"`
}

type networkPolicySpec struct {
	PodSelector labelSelector       `yaml:"podSelector"`
	PolicyTypes []string            `yaml:"policyTypes"`
	Ingress     []networkPolicyRule `yaml:"ingress"`
	Egress      []networkPolicyRule `yaml:"egress"`
}

type networkPolicyRule struct {
	From  []networkPolicyPeer `yaml:"from"`
	To    []networkPolicyPeer `yaml:"to"`
	Ports []struct {
		Port     portRef `yaml:"port"`
		Protocol string  `yaml:"protocol"`
	} `yaml:"ports"`
}

type networkPolicyPeer struct {
	PodSelector       *labelSelector `yaml:"podSelector"`
	NamespaceSelector *labelSelector `yaml:"namespaceSelector"`
	IPBlock           *struct {
		CIDR   string   `yaml:"cidr"`
		Except []string `yaml:"except"`
	} `yaml:"ipBlock"`
}

type pdbSpec struct {
	MinAvailable   *portRef      `yaml:"minAvailable"`
	MaxUnavailable *portRef      `yaml:"maxUnavailable"`
	Selector       labelSelector `yaml:"selector"`
}

type kustomization struct {
	Resources          []string    `yaml:"resources"`
	SecretGenerator    []generator `yaml:"secretGenerator"`
	ConfigMapGenerator []generator `yaml:"configMapGenerator"`
}

type generator struct {
	Name      string   `yaml:"name"`
	Namespace string   `yaml:"namespace"`
	Files     []string `yaml:"files"`
	Literals  []string `yaml:"literals"`
}

// pod is a pod the manifests create: a Deployment's template or a Pod.
type pod struct {
	owner     manifest
	namespace string
	labels    map[string]string
	spec      podSpec
}

func (p pod) String() string { return p.owner.String() }

func (p pod) allContainers() []container {
	return append(slices.Clone(p.spec.InitContainers), p.spec.Containers...)
}

// object is a ConfigMap or Secret, from a manifest or a kustomize
// generator, with its keys' values (a generator's file values are the
// paths of the files it reads).
type object struct {
	kind, namespace, name string
	values                map[string]string
	from                  string
}

// example is the whole example, parsed.
type example struct {
	manifests []manifest
	kust      kustomization
	pods      []pod
	objects   map[string]object // by kind/namespace/name
}

func objectKey(kind, namespace, name string) string { return kind + "/" + namespace + "/" + name }

// lookup returns the ConfigMap or Secret, failing the test if it does not
// exist.
func (e *example) lookup(t *testing.T, kind, namespace, name, from string) object {
	t.Helper()
	o, ok := e.objects[objectKey(kind, namespace, name)]
	if !ok {
		t.Fatalf("%s refers to %s %s/%s, which no manifest or generator defines", from, kind, namespace, name)
	}
	return o
}

// one returns the only manifest of kind named name, failing otherwise.
func (e *example) one(t *testing.T, kind, namespace, name string) manifest {
	t.Helper()
	for _, m := range e.manifests {
		if m.Kind == kind && m.Metadata.Namespace == namespace && m.Metadata.Name == name {
			return m
		}
	}
	t.Fatalf("no %s %s/%s in the manifests", kind, namespace, name)
	return manifest{}
}

func (e *example) ofKind(kind string) []manifest {
	var out []manifest
	for _, m := range e.manifests {
		if m.Kind == kind {
			out = append(out, m)
		}
	}
	return out
}

// podsSelected returns the pods of namespace that sel selects.
func (e *example) podsSelected(namespace string, sel labelSelector) []pod {
	var out []pod
	for _, p := range e.pods {
		if p.namespace == namespace && sel.selects(p.labels) {
			out = append(out, p)
		}
	}
	return out
}

// decodeSpec decodes a manifest's spec, failing the test if it does not
// have the expected shape.
func decodeSpec[T any](t *testing.T, m manifest) T {
	t.Helper()
	var spec T
	if err := m.Spec.Decode(&spec); err != nil {
		t.Fatalf("%s: spec: %v", m, err)
	}
	return spec
}

const kustomizationFile = "kustomization.yaml"

// loadExample parses every manifest of this directory.
func loadExample(t *testing.T) *example {
	t.Helper()
	e := &example{objects: map[string]object{}}
	raw, err := os.ReadFile(kustomizationFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &e.kust); err != nil {
		t.Fatalf("%s: %v", kustomizationFile, err)
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if file == kustomizationFile {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 1; ; i++ {
			var m manifest
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, i, err)
			}
			if m.Kind == "" && m.APIVersion == "" {
				continue // an empty document
			}
			m.file = file
			if m.Kind == "" || m.APIVersion == "" || m.Metadata.Name == "" {
				t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", file, i)
			}
			if m.Kind != "Namespace" && m.Metadata.Namespace == "" {
				t.Errorf("%s: set metadata.namespace, so that applying it never lands in whatever namespace is current", m)
			}
			e.manifests = append(e.manifests, m)
		}
	}
	for _, m := range e.manifests {
		switch m.Kind {
		case "Deployment":
			spec := decodeSpec[deploymentSpec](t, m)
			e.pods = append(e.pods, pod{owner: m, namespace: m.Metadata.Namespace, labels: spec.Template.Metadata.Labels, spec: spec.Template.Spec})
		case "Pod":
			e.pods = append(e.pods, pod{owner: m, namespace: m.Metadata.Namespace, labels: m.Metadata.Labels, spec: decodeSpec[podSpec](t, m)})
		case "ConfigMap", "Secret":
			values := map[string]string{}
			for k, v := range m.Data {
				if m.Kind == "Secret" {
					decoded, err := base64.StdEncoding.DecodeString(v)
					if err != nil {
						t.Fatalf("%s: data.%s is not base64: %v", m, k, err)
					}
					v = string(decoded)
				}
				values[k] = v
			}
			for k, v := range m.StringData {
				values[k] = v
			}
			for k := range m.BinaryData {
				values[k] = ""
			}
			e.addObject(t, object{kind: m.Kind, namespace: m.Metadata.Namespace, name: m.Metadata.Name, values: values, from: m.String()})
		}
	}
	for kind, gens := range map[string][]generator{"Secret": e.kust.SecretGenerator, "ConfigMap": e.kust.ConfigMapGenerator} {
		for _, g := range gens {
			values := map[string]string{}
			for _, f := range g.Files {
				key, file, ok := strings.Cut(f, "=")
				if !ok {
					key, file = path.Base(f), f
				}
				values[key] = file
			}
			for _, l := range g.Literals {
				k, v, _ := strings.Cut(l, "=")
				values[k] = v
			}
			e.addObject(t, object{kind: kind, namespace: g.Namespace, name: g.Name, values: values, from: kustomizationFile + " " + strings.ToLower(kind) + "Generator"})
		}
	}
	return e
}

func (e *example) addObject(t *testing.T, o object) {
	t.Helper()
	key := objectKey(o.kind, o.namespace, o.name)
	if prev, dup := e.objects[key]; dup {
		t.Fatalf("%s %s/%s is defined twice: by %s and by %s", o.kind, o.namespace, o.name, prev.from, o.from)
	}
	e.objects[key] = o
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	e := loadExample(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f != kustomizationFile && !slices.Contains(e.kust.Resources, f) {
			t.Errorf("%s is not in %s's resources: `kubectl apply -k` would skip it", f, kustomizationFile)
		}
	}
	for _, r := range e.kust.Resources {
		if _, err := os.Stat(r); err != nil {
			t.Errorf("%s lists %s: %v", kustomizationFile, r, err)
		}
	}
	for _, g := range append(slices.Clone(e.kust.SecretGenerator), e.kust.ConfigMapGenerator...) {
		if g.Namespace == "" {
			t.Errorf("generator %s has no namespace", g.Name)
		}
		for _, f := range g.Files {
			if _, file, ok := strings.Cut(f, "="); ok {
				f = file
			}
			if !strings.HasPrefix(f, "ca/") {
				t.Errorf("generator %s reads %s; only the CA made by `egressgw ca init --out ca` is expected there (and kept out of git)", g.Name, f)
			}
		}
	}
	ignore, err := os.ReadFile(".gitignore")
	if err != nil || !strings.Contains(string(ignore), "/ca/") {
		t.Errorf(".gitignore must keep ca/ (the CA's private key) out of git")
	}
	namespaces := map[string]bool{}
	for _, m := range e.ofKind("Namespace") {
		namespaces[m.Metadata.Name] = true
	}
	for _, m := range e.manifests {
		if m.Kind != "Namespace" && !namespaces[m.Metadata.Namespace] {
			t.Errorf("%s is in namespace %q, which the example does not create", m, m.Metadata.Namespace)
		}
	}
}

func TestSelectorsMatchPods(t *testing.T) {
	e := loadExample(t)
	for _, m := range e.ofKind("Deployment") {
		spec := decodeSpec[deploymentSpec](t, m)
		if len(spec.Selector.MatchLabels) == 0 || !spec.Selector.selects(spec.Template.Metadata.Labels) {
			t.Errorf("%s: selector %v does not select its own template's labels %v", m, spec.Selector.MatchLabels, spec.Template.Metadata.Labels)
		}
		for _, other := range e.ofKind("Deployment") {
			if other.Metadata.Name != m.Metadata.Name && other.Metadata.Namespace == m.Metadata.Namespace {
				if spec.Selector.selects(decodeSpec[deploymentSpec](t, other).Template.Metadata.Labels) {
					t.Errorf("%s: selector %v also selects the pods of %s", m, spec.Selector.MatchLabels, other)
				}
			}
		}
	}
	for _, m := range e.ofKind("Service") {
		spec := decodeSpec[serviceSpec](t, m)
		sel := labelSelector{MatchLabels: spec.Selector}
		if pods := e.podsSelected(m.Metadata.Namespace, sel); len(spec.Selector) == 0 || len(pods) != 1 {
			t.Errorf("%s: selector %v selects %v; want the pods of exactly one workload", m, spec.Selector, pods)
		}
	}
	for _, m := range e.ofKind("PodDisruptionBudget") {
		spec := decodeSpec[pdbSpec](t, m)
		pods := e.podsSelected(m.Metadata.Namespace, spec.Selector)
		if len(spec.Selector.MatchLabels) == 0 || len(pods) != 1 {
			t.Fatalf("%s: selector %v selects %v; want one Deployment's pods", m, spec.Selector.MatchLabels, pods)
		}
		replicas := decodeSpec[deploymentSpec](t, pods[0].owner).Replicas
		if spec.MinAvailable == nil {
			t.Fatalf("%s: want minAvailable", m)
		}
		minAvailable, err := strconv.Atoi(string(*spec.MinAvailable))
		if err != nil || replicas == nil || minAvailable >= *replicas {
			t.Errorf("%s: minAvailable %v with %s replicas would block every node drain", m, *spec.MinAvailable, show(replicas))
		}
	}
	for _, m := range e.ofKind("NetworkPolicy") {
		spec := decodeSpec[networkPolicySpec](t, m)
		if len(spec.PodSelector.MatchLabels) > 0 && len(e.podsSelected(m.Metadata.Namespace, spec.PodSelector)) == 0 {
			t.Errorf("%s: podSelector %v selects no pod of the example", m, spec.PodSelector.MatchLabels)
		}
		for _, rule := range append(slices.Clone(spec.Ingress), spec.Egress...) {
			for _, peer := range append(slices.Clone(rule.From), rule.To...) {
				if ns, ours := peerNamespace(e, m, peer); ours && peer.PodSelector != nil && len(e.podsSelected(ns, *peer.PodSelector)) == 0 {
					t.Errorf("%s: peer podSelector %v selects no pod in namespace %s", m, peer.PodSelector.MatchLabels, ns)
				}
			}
		}
	}
}

// peerNamespace says which namespace a NetworkPolicy peer's podSelector
// looks in, and whether the example creates it (kube-system and
// monitoring are the cluster's).
func peerNamespace(e *example, policy manifest, peer networkPolicyPeer) (string, bool) {
	ns := policy.Metadata.Namespace
	if peer.NamespaceSelector != nil {
		ns = peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
	}
	for _, m := range e.ofKind("Namespace") {
		if m.Metadata.Name == ns {
			return ns, true
		}
	}
	return ns, false
}

func TestServicePortsReachContainers(t *testing.T) {
	e := loadExample(t)
	for _, m := range e.ofKind("Service") {
		spec := decodeSpec[serviceSpec](t, m)
		for _, p := range e.podsSelected(m.Metadata.Namespace, labelSelector{MatchLabels: spec.Selector}) {
			for _, sp := range spec.Ports {
				target := sp.TargetPort
				if target == "" {
					target = portRef(strconv.Itoa(sp.Port))
				}
				found := false
				for _, c := range p.spec.Containers {
					found = found || c.containerPort(target) != 0
				}
				if !found {
					t.Errorf("%s: port %q targets %q, which no container of %s declares", m, sp.Name, target, p)
				}
			}
		}
	}
}

func TestProbesTargetContainerPorts(t *testing.T) {
	e := loadExample(t)
	for _, p := range e.pods {
		for _, c := range p.spec.Containers {
			for name, pr := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
				if pr == nil {
					continue
				}
				if pr.Exec != nil {
					t.Errorf("%s container %s: %s runs a command; the images have no shell, probe a port", p, c.Name, name)
					continue
				}
				if c.containerPort(pr.port()) == 0 {
					t.Errorf("%s container %s: %s probes port %q, which the container does not declare", p, c.Name, name, pr.port())
				}
			}
		}
	}
}

func TestConfigAndSecretReferencesExist(t *testing.T) {
	e := loadExample(t)
	for _, p := range e.pods {
		volumes := map[string]bool{}
		for _, v := range p.spec.Volumes {
			volumes[v.Name] = true
			for _, r := range v.refs() {
				from := fmt.Sprintf("%s volume %s", p, v.Name)
				o := e.lookup(t, r.kind, p.namespace, r.Name, from)
				for _, item := range r.Items {
					if _, ok := o.values[item.Key]; !ok {
						t.Errorf("%s: item key %q is not a key of %s %s (keys: %v)", from, item.Key, r.kind, o.name, slices.Sorted(maps.Keys(o.values)))
					}
				}
			}
		}
		for _, c := range p.allContainers() {
			for _, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					t.Errorf("%s container %s mounts volume %q, which the pod does not define", p, c.Name, m.Name)
				}
				if m.SubPath != "" {
					t.Errorf("%s container %s mounts %s with subPath: such a mount never sees ConfigMap updates, so hot reload would not", p, c.Name, m.MountPath)
				}
			}
			for _, env := range c.Env {
				if env.ValueFrom == nil {
					continue
				}
				from := fmt.Sprintf("%s container %s env %s", p, c.Name, env.Name)
				if r := env.ValueFrom.SecretKeyRef; r != nil {
					if _, ok := e.lookup(t, "Secret", p.namespace, r.Name, from).values[r.Key]; !ok {
						t.Errorf("%s: Secret %s has no key %q", from, r.Name, r.Key)
					}
				}
				if r := env.ValueFrom.ConfigMapKeyRef; r != nil {
					if _, ok := e.lookup(t, "ConfigMap", p.namespace, r.Name, from).values[r.Key]; !ok {
						t.Errorf("%s: ConfigMap %s has no key %q", from, r.Name, r.Key)
					}
				}
			}
			for _, ef := range c.EnvFrom {
				from := fmt.Sprintf("%s container %s envFrom", p, c.Name)
				if ef.SecretRef != nil {
					e.lookup(t, "Secret", p.namespace, ef.SecretRef.Name, from)
				}
				if ef.ConfigMapRef != nil {
					e.lookup(t, "ConfigMap", p.namespace, ef.ConfigMapRef.Name, from)
				}
			}
		}
	}
}

func TestPodsAreLockedDown(t *testing.T) {
	e := loadExample(t)
	for _, p := range e.pods {
		if p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken {
			t.Errorf("%s: set automountServiceAccountToken: false; nothing here talks to the API server", p)
		}
		sc := p.spec.SecurityContext
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("%s: want securityContext runAsNonRoot: true and a non-zero runAsUser", p)
		}
		for _, c := range p.allContainers() {
			csc := c.SecurityContext
			if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
				t.Errorf("%s container %s: want allowPrivilegeEscalation: false", p, c.Name)
			}
			if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
				t.Errorf("%s container %s: want readOnlyRootFilesystem: true", p, c.Name)
			}
			if csc.Privileged != nil && *csc.Privileged {
				t.Errorf("%s container %s: privileged", p, c.Name)
			}
			if !slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) || len(csc.Capabilities.Add) > 0 {
				t.Errorf("%s container %s: capabilities drop %v add %v; want drop [ALL], add none", p, c.Name, csc.Capabilities.Drop, csc.Capabilities.Add)
			}
			if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
				t.Errorf("%s container %s: want cpu and memory requests and a memory limit, got %+v", p, c.Name, c.Resources)
			}
		}
	}
}

// gateway is the egressgw Deployment with what the tests need of it.
type gateway struct {
	deployment manifest
	spec       deploymentSpec
	container  container
	pod        pod
}

func gatewayOf(t *testing.T, e *example) gateway {
	t.Helper()
	m := e.one(t, "Deployment", "egressgw", "egressgw")
	spec := decodeSpec[deploymentSpec](t, m)
	if len(spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s: want one container, got %d", m, len(spec.Template.Spec.Containers))
	}
	g := gateway{deployment: m, spec: spec, container: spec.Template.Spec.Containers[0]}
	for _, p := range e.pods {
		if p.owner.file == m.file && p.owner.Metadata.Name == m.Metadata.Name {
			g.pod = p
		}
	}
	return g
}

// configFlag returns the value of --config in the container's args.
func (g gateway) configFlag(t *testing.T) string {
	t.Helper()
	args := g.container.Args
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v
		}
	}
	t.Fatalf("%s: args %q have no --config", g.deployment, args)
	return ""
}

// configVolume returns the projected volume mounted at the --config path.
func (g gateway) configVolume(t *testing.T) volume {
	t.Helper()
	dir := g.configFlag(t)
	for _, m := range g.container.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(dir) {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("%s: mount %s should be readOnly: the gateway only reads its config", g.deployment, m.MountPath)
		}
		for _, v := range g.pod.spec.Volumes {
			if v.Name == m.Name {
				if v.Projected == nil {
					t.Fatalf("%s: volume %s is not projected; the config needs the ConfigMap and the CA Secret in one directory", g.deployment, v.Name)
				}
				return v
			}
		}
	}
	t.Fatalf("%s: --config %s is not where any volume is mounted (mounts: %+v)", g.deployment, dir, g.container.VolumeMounts)
	return volume{}
}

// gatewayYAML is the gateway.yaml the config volume projects, as text.
func (g gateway) gatewayYAML(t *testing.T, e *example) string {
	t.Helper()
	for _, s := range g.configVolume(t).Projected.Sources {
		if s.ConfigMap == nil {
			continue
		}
		for _, item := range s.ConfigMap.Items {
			if item.Path == "gateway.yaml" {
				return e.lookup(t, "ConfigMap", g.pod.namespace, s.ConfigMap.Name, "config volume").values[item.Key]
			}
		}
	}
	t.Fatalf("%s: the config volume projects no gateway.yaml", g.deployment)
	return ""
}

// gatewaySettings are the parts of gateway.yaml the manifests must agree
// with.
type gatewaySettings struct {
	Listen      string `yaml:"listen"`
	AdminListen string `yaml:"admin_listen"`
	Limits      struct {
		ShutdownGrace string `yaml:"shutdown_grace"`
	} `yaml:"limits"`
	Quota struct {
		Backend string `yaml:"backend"`
		Redis   struct {
			Addr string `yaml:"addr"`
		} `yaml:"redis"`
		Replicas *int `yaml:"replicas"`
	} `yaml:"quota"`
	State struct {
		Backend string `yaml:"backend"`
	} `yaml:"state"`
	Admin struct {
		Tokens []adminToken `yaml:"tokens"`
	} `yaml:"admin"`
}

type adminToken struct {
	Name        string   `yaml:"name"`
	TokenSHA256 string   `yaml:"token_sha256"`
	Role        string   `yaml:"role"`
	Tenants     []string `yaml:"tenants"`
}

// adminListenerGuarded fails when the admin listener is reachable beyond
// the pod's loopback with no admin token configured: every /v1/ read
// (explain, usage, access requests, grants) would then answer whoever the
// NetworkPolicy lets in, and no write would work (docs/admins.md, "Admin
// tokens").
func adminListenerGuarded(s gatewaySettings) error {
	host, _, err := net.SplitHostPort(s.AdminListen)
	if err != nil {
		return fmt.Errorf("admin_listen %q: %w", s.AdminListen, err)
	}
	if ip, err := netip.ParseAddr(host); host == "localhost" || (err == nil && ip.IsLoopback()) {
		return nil
	}
	if len(s.Admin.Tokens) == 0 {
		return fmt.Errorf("admin_listen %q is beyond loopback but admin.tokens is empty: the admin API reads without a token and refuses every write", s.AdminListen)
	}
	for _, tok := range s.Admin.Tokens {
		if tok.Role == "admin" {
			return nil
		}
	}
	return errors.New("no admin.tokens entry has role admin: nobody could run every admin command")
}

// stateShared fails when replicas would each keep their own access
// requests and grants: with more than one replica, a grant approved
// through one must apply on all, which only the redis backend does
// (docs/operators.md, "The state store").
func stateShared(s gatewaySettings, replicas int) error {
	backend := s.State.Backend
	if backend == "" {
		backend = "file" // the default of docs/reference.md
	}
	if replicas > 1 && backend != "redis" {
		return fmt.Errorf("state.backend %s with %d replicas: each replica would keep its own grants and access requests; want redis", backend, replicas)
	}
	if backend == "redis" && s.Quota.Redis.Addr == "" {
		return errors.New("state.backend redis connects with quota.redis, which sets no addr")
	}
	return nil
}

func parseSettings(t *testing.T, text string) gatewaySettings {
	t.Helper()
	var s gatewaySettings
	if err := yaml.Unmarshal([]byte(text), &s); err != nil {
		t.Fatalf("gateway.yaml: %v", err)
	}
	if s.Listen == "" {
		s.Listen = ":3128" // the defaults of docs/reference.md
	}
	if s.AdminListen == "" {
		s.AdminListen = "127.0.0.1:9128"
	}
	if s.Limits.ShutdownGrace == "" {
		s.Limits.ShutdownGrace = "20s"
	}
	return s
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return n
}

func TestGatewayDeployment(t *testing.T) {
	e := loadExample(t)
	g := gatewayOf(t, e)
	settings := parseSettings(t, g.gatewayYAML(t, e))

	if g.spec.Replicas == nil || *g.spec.Replicas != 2 {
		t.Errorf("%s: replicas %s, want 2", g.deployment, show(g.spec.Replicas))
	}
	if len(g.container.Command) > 0 {
		t.Errorf("%s: command %q overrides the image's ENTRYPOINT /egressgw; give args only", g.deployment, g.container.Command)
	}
	t.Run("args are the binary's", func(t *testing.T) {
		args := g.container.Args
		if len(args) == 0 || args[0] != "serve" {
			t.Fatalf("args %q: want the serve subcommand first", args)
		}
		known := serveFlags(t)
		for _, a := range args[1:] {
			if !strings.HasPrefix(a, "-") {
				continue // a flag's value
			}
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !known[name] {
				t.Errorf("args %q: %s is not a flag of `egressgw serve` (it has %v)", args, a, slices.Sorted(maps.Keys(known)))
			}
		}
	})
	t.Run("config mount", func(t *testing.T) {
		g.configVolume(t) // fails unless a projected volume is mounted at --config
	})
	t.Run("ports agree with gateway.yaml", func(t *testing.T) {
		if got := g.container.containerPort("proxy"); got != portOf(t, settings.Listen) {
			t.Errorf("containerPort proxy %d, but gateway.yaml listens on %q", got, settings.Listen)
		}
		if got := g.container.containerPort("admin"); got != portOf(t, settings.AdminListen) {
			t.Errorf("containerPort admin %d, but gateway.yaml's admin_listen is %q", got, settings.AdminListen)
		}
		host, _, _ := net.SplitHostPort(settings.AdminListen)
		if ip, err := netip.ParseAddr(host); host == "localhost" || (err == nil && ip.IsLoopback()) {
			t.Errorf("admin_listen %q is loopback: the kubelet's probes and Prometheus could not reach it", settings.AdminListen)
		}
	})
	t.Run("probes", func(t *testing.T) {
		c := g.container
		for _, want := range []struct {
			name, path string
			probe      *probe
		}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
			if want.probe == nil || want.probe.HTTPGet == nil || want.probe.HTTPGet.Path != want.path {
				t.Errorf("%s: want httpGet %s on the admin port", want.name, want.path)
			}
		}
		for _, pr := range []*probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr != nil && c.containerPort(pr.port()) != portOf(t, settings.AdminListen) {
				t.Errorf("probe on port %q, not on the admin listener %q", pr.port(), settings.AdminListen)
			}
		}
	})
	t.Run("graceful termination", func(t *testing.T) {
		grace, err := time.ParseDuration(settings.Limits.ShutdownGrace)
		if err != nil {
			t.Fatalf("limits.shutdown_grace %q: %v", settings.Limits.ShutdownGrace, err)
		}
		tgps := g.pod.spec.TerminationGracePeriodSeconds
		if tgps == nil || time.Duration(*tgps)*time.Second < grace+5*time.Second {
			t.Errorf("terminationGracePeriodSeconds %s must exceed limits.shutdown_grace %v (by 5s or more), or the kubelet kills connections still draining", show(tgps), grace)
		}
	})
	t.Run("CA key is not world-readable", func(t *testing.T) {
		for _, s := range g.configVolume(t).Projected.Sources {
			if s.Secret == nil {
				continue
			}
			for _, item := range s.Secret.Items {
				if strings.Contains(item.Key, "key") && (item.Mode == nil || *item.Mode&0o007 != 0) {
					t.Errorf("Secret %s item %s: mode %s; want no access for others (0440 with fsGroup)", s.Secret.Name, item.Key, showMode(item.Mode))
				}
			}
		}
	})
}

func TestNetworkPoliciesForceEgress(t *testing.T) {
	e := loadExample(t)
	g := gatewayOf(t, e)
	proxyPort := g.container.containerPort("proxy")
	redis := e.one(t, "Service", "egressgw", "egressgw-redis")
	redisPods := e.podsSelected("egressgw", labelSelector{MatchLabels: decodeSpec[serviceSpec](t, redis).Selector})
	if len(redisPods) != 1 {
		t.Fatalf("%s selects %d workloads, want 1", redis, len(redisPods))
	}
	redisPort := redisPods[0].spec.Containers[0].containerPort("redis")

	// policiesFor returns the NetworkPolicies that select p.
	policiesFor := func(p pod) (ingress, egress []networkPolicyRule, types map[string]bool) {
		types = map[string]bool{}
		for _, m := range e.ofKind("NetworkPolicy") {
			spec := decodeSpec[networkPolicySpec](t, m)
			if m.Metadata.Namespace != p.namespace || !spec.PodSelector.selects(p.labels) {
				continue
			}
			for _, pt := range spec.PolicyTypes {
				types[pt] = true
			}
			ingress = append(ingress, spec.Ingress...)
			egress = append(egress, spec.Egress...)
		}
		return ingress, egress, types
	}
	// peerPods returns the example's pods a peer selects, seen from a
	// policy in namespace ns; external is true for peers outside the
	// example (cluster DNS, monitoring, ipBlocks).
	peerPods := func(ns string, peer networkPolicyPeer) (pods []pod, external bool) {
		if peer.IPBlock != nil {
			return nil, true
		}
		if peer.NamespaceSelector != nil {
			ns = peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
			if ns == "" {
				t.Fatalf("namespaceSelector %v: select namespaces by kubernetes.io/metadata.name", peer.NamespaceSelector.MatchLabels)
			}
		}
		sel := labelSelector{}
		if peer.PodSelector != nil {
			sel = *peer.PodSelector
		}
		pods = e.podsSelected(ns, sel)
		return pods, len(pods) == 0
	}
	isGateway := func(p pod) bool {
		return p.owner.Metadata.Name == g.deployment.Metadata.Name && p.namespace == g.pod.namespace
	}
	rulePorts := func(r networkPolicyRule) []string {
		var out []string
		for _, p := range r.Ports {
			out = append(out, string(p.Port)+"/"+p.Protocol)
		}
		return out
	}

	var sandboxes []pod
	for _, p := range e.pods {
		if p.labels["egressgw.io/sandbox"] == "true" {
			sandboxes = append(sandboxes, p)
		}
	}
	if len(sandboxes) == 0 {
		t.Fatal("no example pod carries egressgw.io/sandbox: \"true\"")
	}
	for _, sb := range sandboxes {
		_, egress, types := policiesFor(sb)
		if !types["Egress"] {
			t.Errorf("%s: no NetworkPolicy restricts its egress", sb)
		}
		reachesGateway := false
		for _, rule := range egress {
			if len(rule.To) == 0 {
				t.Errorf("%s: an egress rule with no `to` allows every destination", sb)
			}
			for _, peer := range rule.To {
				pods, external := peerPods(sb.namespace, peer)
				switch {
				case peer.IPBlock != nil:
					t.Errorf("%s: egress to ipBlock %s goes around the gateway", sb, peer.IPBlock.CIDR)
				case len(pods) == 1 && isGateway(pods[0]):
					if !slices.Equal(rulePorts(rule), []string{fmt.Sprintf("%d/TCP", proxyPort)}) {
						t.Errorf("%s: egress to the gateway on %v; want only the proxy port %d/TCP", sb, rulePorts(rule), proxyPort)
					}
					reachesGateway = true
				case external && peer.PodSelector != nil && peer.PodSelector.MatchLabels["k8s-app"] == "kube-dns":
					for _, p := range rule.Ports {
						if p.Port != "53" {
							t.Errorf("%s: egress to cluster DNS on port %s; want 53 only", sb, p.Port)
						}
					}
				default:
					t.Errorf("%s: egress to %+v (pods %v), which is neither the gateway nor cluster DNS", sb, peer, pods)
				}
			}
		}
		if !reachesGateway {
			t.Errorf("%s: no egress rule lets it reach the gateway's proxy port", sb)
		}
	}

	t.Run("the gateway", func(t *testing.T) {
		ingress, egress, types := policiesFor(g.pod)
		if !types["Ingress"] || !types["Egress"] {
			t.Errorf("the gateway's pods are not under an Ingress and Egress NetworkPolicy (types %v)", types)
		}
		for _, rule := range ingress {
			for _, port := range rule.Ports {
				if port.Port != portRef(strconv.Itoa(proxyPort)) {
					continue
				}
				for _, peer := range rule.From {
					pods, _ := peerPods(g.pod.namespace, peer)
					for _, p := range pods {
						if p.labels["egressgw.io/sandbox"] != "true" {
							t.Errorf("the proxy port admits %s, which is not a sandbox", p)
						}
					}
					if peer.PodSelector == nil || peer.PodSelector.MatchLabels["egressgw.io/sandbox"] != "true" {
						t.Errorf("the proxy port admits %+v; want sandbox pods only", peer)
					}
				}
			}
		}
		toRedis, toInternet := false, false
		for _, rule := range egress {
			for _, peer := range rule.To {
				if peer.IPBlock != nil {
					prefix, err := netip.ParsePrefix(peer.IPBlock.CIDR)
					if err != nil {
						t.Fatalf("ipBlock cidr %q: %v", peer.IPBlock.CIDR, err)
					}
					toInternet = toInternet || prefix.Bits() == 0
					for _, ex := range peer.IPBlock.Except {
						exp, err := netip.ParsePrefix(ex)
						if err != nil || !prefix.Contains(exp.Addr()) || exp.Bits() < prefix.Bits() {
							t.Errorf("ipBlock %s: except %q is not inside it", peer.IPBlock.CIDR, ex)
						}
					}
					continue
				}
				pods, _ := peerPods(g.pod.namespace, peer)
				if len(pods) == 1 && pods[0].owner.Metadata.Name == redisPods[0].owner.Metadata.Name {
					toRedis = slices.Contains(rulePorts(rule), fmt.Sprintf("%d/TCP", redisPort))
				}
			}
		}
		if !toInternet {
			t.Error("the gateway may not reach the internet (no 0.0.0.0/0 ipBlock)")
		}
		if !toRedis {
			t.Errorf("the gateway may not reach Redis on %d/TCP", redisPort)
		}
	})
	t.Run("redis", func(t *testing.T) {
		ingress, egress, types := policiesFor(redisPods[0])
		if !types["Ingress"] || !types["Egress"] || len(egress) > 0 {
			t.Errorf("Redis: policy types %v with %d egress rules; want ingress from the gateway only and no egress", types, len(egress))
		}
		for _, rule := range ingress {
			for _, peer := range rule.From {
				pods, external := peerPods(redisPods[0].namespace, peer)
				if external || len(pods) != 1 || !isGateway(pods[0]) {
					t.Errorf("Redis admits %+v; want the gateway's pods only", peer)
				}
			}
		}
	})
}

// TestSandboxProxyEnvironment checks that the proxy URL a sandbox gets
// names the gateway's Service and port and carries a tenant's real
// credentials.
func TestSandboxProxyEnvironment(t *testing.T) {
	e := loadExample(t)
	g := gatewayOf(t, e)
	svc := e.one(t, "Service", "egressgw", "egressgw")
	var proxyPort int
	for _, p := range decodeSpec[serviceSpec](t, svc).Ports {
		if p.Name == "proxy" {
			proxyPort = p.Port
		}
	}
	secret := e.lookup(t, "Secret", "sandboxes", "acme-egress", "the sandbox example")
	tenants := tenantFiles(t, e, g)
	for _, name := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		raw, ok := secret.values[name]
		if !ok {
			t.Errorf("Secret acme-egress has no %s", name)
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || u.User == nil {
			t.Errorf("%s=%q: want http://TENANT:TOKEN@HOST:PORT", name, raw)
			continue
		}
		if want := fmt.Sprintf("%s.%s.svc.cluster.local:%d", svc.Metadata.Name, svc.Metadata.Namespace, proxyPort); u.Host != want {
			t.Errorf("%s points at %s, want the gateway Service %s", name, u.Host, want)
		}
		token, _ := u.User.Password()
		tenant, ok := tenants[u.User.Username()]
		if !ok {
			t.Errorf("%s names tenant %q, which the ConfigMap does not define (tenants: %v)", name, u.User.Username(), slices.Sorted(maps.Keys(tenants)))
			continue
		}
		sum := sha256.Sum256([]byte(token))
		if hex.EncodeToString(sum[:]) != tenant.Auth.TokenSHA256 {
			t.Errorf("%s's token does not hash to tenant %s's token_sha256: the gateway would answer 407", name, tenant.ID)
		}
	}
	for _, name := range []string{"NO_PROXY", "no_proxy"} {
		for _, host := range strings.Split(secret.values[name], ",") {
			if !slices.Contains([]string{"localhost", "127.0.0.1", "::1"}, strings.TrimSpace(host)) {
				t.Errorf("%s lists %q: only the sandbox's own loopback should bypass the gateway", name, host)
			}
		}
	}
}

type tenantFile struct {
	ID   string `yaml:"id"`
	Auth struct {
		TokenSHA256 string `yaml:"token_sha256"`
	} `yaml:"auth"`
}

// tenantFiles returns the tenant files the config volume projects, by id.
func tenantFiles(t *testing.T, e *example, g gateway) map[string]tenantFile {
	t.Helper()
	out := map[string]tenantFile{}
	for _, s := range g.configVolume(t).Projected.Sources {
		if s.ConfigMap == nil {
			continue
		}
		cm := e.lookup(t, "ConfigMap", g.pod.namespace, s.ConfigMap.Name, "config volume")
		for _, item := range s.ConfigMap.Items {
			if !strings.HasPrefix(item.Path, "tenants/") {
				continue
			}
			var tf tenantFile
			if err := yaml.Unmarshal([]byte(cm.values[item.Key]), &tf); err != nil {
				t.Fatalf("ConfigMap %s key %s: %v", cm.name, item.Key, err)
			}
			out[tf.ID] = tf
		}
	}
	return out
}

// ---- the binary ----

var egressgwBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "egressgw-k8s-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go env GOMOD:", err)
		return 1
	}
	egressgwBinary = filepath.Join(dir, "egressgw")
	build := exec.Command("go", "build", "-o", egressgwBinary, "./cmd/egressgw")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building egressgw: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

type result struct {
	stdout, stderr string
	exitCode       int
}

func (r result) output() string { return r.stdout + r.stderr }

// egressgw runs the binary with env added to this process's environment.
func egressgw(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, egressgwBinary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("egressgw %s did not finish", strings.Join(args, " "))
	case errors.As(err, &exit):
		r.exitCode = exit.ExitCode()
	case err != nil:
		t.Fatalf("running egressgw: %v", err)
	}
	return r
}

var helpFlag = regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)

// serveFlags are the flags `egressgw serve -h` lists.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	res := egressgw(t, nil, "serve", "-h")
	flags := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(res.output(), -1) {
		flags[m[1]] = true
	}
	if !flags["config"] || !flags["listen"] {
		t.Fatalf("`egressgw serve -h` lists no --config or --listen flag; output:\n%s", res.output())
	}
	return flags
}

// materialize writes the config volume as the kubelet does: the projected
// files in a timestamped directory, a "..data" symlink to it, and a
// symlink per top-level name. Generated Secrets read the CA from caDir.
func materialize(t *testing.T, e *example, g gateway, caDir string, edit func(key, value string) string) string {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_01_01_00_00_00.000000001")
	top := map[string]bool{}
	for _, ref := range g.configVolume(t).refs() {
		o := e.lookup(t, ref.kind, g.pod.namespace, ref.Name, "config volume")
		for _, item := range ref.Items {
			value := o.values[item.Key]
			if strings.HasSuffix(o.from, "Generator") {
				// A file a kustomize generator reads: the CA, made fresh.
				b, err := os.ReadFile(filepath.Join(caDir, path.Base(value)))
				if err != nil {
					t.Fatalf("generator file %s: %v", value, err)
				}
				value = string(b)
			}
			if edit != nil {
				value = edit(item.Key, value)
			}
			target := filepath.Join(data, filepath.FromSlash(item.Path))
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(target, []byte(value), 0o644); err != nil {
				t.Fatal(err)
			}
			top[strings.Split(item.Path, "/")[0]] = true
		}
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range top {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// containerEnv is the gateway container's environment, with values from
// the Secrets and ConfigMaps it references.
func containerEnv(t *testing.T, e *example, g gateway) []string {
	t.Helper()
	var env []string
	for _, v := range g.container.Env {
		value := v.Value
		if v.ValueFrom != nil && v.ValueFrom.SecretKeyRef != nil {
			value = e.lookup(t, "Secret", g.pod.namespace, v.ValueFrom.SecretKeyRef.Name, "env").values[v.ValueFrom.SecretKeyRef.Key]
		}
		if v.ValueFrom != nil && v.ValueFrom.ConfigMapKeyRef != nil {
			value = e.lookup(t, "ConfigMap", g.pod.namespace, v.ValueFrom.ConfigMapKeyRef.Name, "env").values[v.ValueFrom.ConfigMapKeyRef.Key]
		}
		env = append(env, v.Name+"="+value)
	}
	return env
}

// newCA makes an inspection CA the way the docs say to.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if res := egressgw(t, nil, "ca", "init", "--out", dir); res.exitCode != 0 {
		t.Fatalf("egressgw ca init: exit %d\n%s", res.exitCode, res.output())
	}
	return dir
}

// TestConfigMapIsAValidConfig materializes the config volume and runs the
// binary on it: check accepts it, serve serves it, the probes' paths
// answer, and explain decides the example tenant's requests as the
// comments say.
func TestConfigMapIsAValidConfig(t *testing.T) {
	e := loadExample(t)
	g := gatewayOf(t, e)
	env := containerEnv(t, e, g)
	caDir := newCA(t)
	dir := materialize(t, e, g, caDir, nil)

	res := egressgw(t, env, "check", "--config", dir)
	connectors := 0
	for _, ref := range g.configVolume(t).refs() {
		for _, item := range ref.Items {
			if strings.HasPrefix(item.Path, "connectors/") {
				connectors++
			}
		}
	}
	want := fmt.Sprintf("ok: %d tenants, %d connectors", len(tenantFiles(t, e, g)), connectors)
	if res.exitCode != 0 || !strings.Contains(res.stdout, want) {
		t.Fatalf("egressgw check --config <the ConfigMap>: exit %d, want 0 and %q; output:\n%s", res.exitCode, want, res.output())
	}
	if strings.Contains(res.stdout, "warning:") {
		t.Errorf("egressgw check warns about the example:\n%s", res.stdout)
	}

	for _, tc := range []struct{ url, decision string }{
		{"https://api.github.com/", "ALLOW"},
		{"https://pypi.org/", "ALLOW"},
		{"https://pastebin.com/", "DENY"},
		{"https://example.com/", "DENY"},
	} {
		res := egressgw(t, env, "explain", "--config", dir, "--tenant", "acme", tc.url)
		if res.exitCode != 0 || !strings.Contains(res.stdout, "decision: "+tc.decision) {
			t.Errorf("explain %s: exit %d, want decision %s; output:\n%s", tc.url, res.exitCode, tc.decision, res.output())
		}
	}

	t.Run("serves it and answers the probes", func(t *testing.T) {
		// The Redis Service's name resolves only in the cluster: with a
		// local redis-server, the config is served with its address
		// instead, so that the state store answers as it would there.
		served := dir
		settings := parseSettings(t, g.gatewayYAML(t, e))
		redisAddr := startRedis(t)
		if redisAddr != "" {
			served = materialize(t, e, g, caDir, func(key, value string) string {
				return strings.ReplaceAll(value, settings.Quota.Redis.Addr, redisAddr)
			})
		}
		proxyAddr, adminAddr := freeAddr(t), freeAddr(t)
		args := append(slices.Clone(g.container.Args), "--listen", proxyAddr, "--admin-listen", adminAddr)
		args[slices.Index(args, "--config")+1] = served
		cmd := exec.Command(egressgwBinary, args...)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("egressgw stderr:\n%s", stderr.String())
			}
		})
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
		for _, pr := range []*probe{g.container.ReadinessProbe, g.container.LivenessProbe} {
			probeURL := "http://" + adminAddr + pr.HTTPGet.Path
			deadline := time.Now().Add(60 * time.Second)
			for {
				last := ""
				resp, err := client.Get(probeURL)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						break
					}
					last = resp.Status
				} else {
					last = err.Error()
				}
				select {
				case err := <-exited:
					exited <- err // for the cleanup
					t.Fatalf("egressgw %s exited (%v) before %s answered", strings.Join(args, " "), err, pr.HTTPGet.Path)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("GET %s never answered 200 (last: %s)", probeURL, last)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}

		// The sandbox's proxy URL, pointed at this gateway, identifies the
		// tenant: a host outside its policy is refused as not allowed, not
		// as unauthenticated.
		sandboxProxy, err := url.Parse(e.lookup(t, "Secret", "sandboxes", "acme-egress", "the sandbox example").values["HTTP_PROXY"])
		if err != nil {
			t.Fatal(err)
		}
		sandboxProxy.Host = proxyAddr
		viaGateway := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(sandboxProxy)}}
		resp, err := viaGateway.Get("http://pastebin.com/")
		if err != nil {
			t.Fatalf("GET through the gateway with the sandbox's proxy URL: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Egressgw-Error") != "destination_not_allowed" {
			t.Errorf("GET http://pastebin.com/ as the sandbox: %s, X-Egressgw-Error %q; want 403 destination_not_allowed (no rule allows it)", resp.Status, resp.Header.Get("X-Egressgw-Error"))
		}

		// Prometheus scrapes without a token; the admin API needs one.
		if status, _, _ := adminGet(t, client, "http://"+adminAddr+"/metrics", ""); status != http.StatusOK {
			t.Errorf("GET /metrics without a token: %d; want 200, as the ServiceMonitor scrapes it", status)
		}
		status, header, body := adminGet(t, client, "http://"+adminAddr+"/v1/config", "")
		if status != http.StatusUnauthorized || header.Get("X-Egressgw-Error") != "admin_auth_required" ||
			!strings.HasPrefix(header.Get("WWW-Authenticate"), "Bearer") || jsonErrorCode(body) != "admin_auth_required" {
			t.Errorf("GET /v1/config without a token: %d, X-Egressgw-Error %q, WWW-Authenticate %q, body %s; want 401 admin_auth_required with a Bearer challenge",
				status, header.Get("X-Egressgw-Error"), header.Get("WWW-Authenticate"), body)
		}
		tokens := e.lookup(t, "Secret", g.pod.namespace, adminTokenSecret, "the admin tokens").values
		for name, token := range tokens {
			if status, _, body := adminGet(t, client, "http://"+adminAddr+"/v1/config", token); status != http.StatusOK {
				t.Errorf("GET /v1/config with the Secret's %s token: %d %s; want 200", name, status, body)
			}
		}

		// An approver runs the CLI with its token from the Secret: the
		// refusal above is an access request of acme's.
		if redisAddr == "" {
			return
		}
		approver := ""
		for _, tok := range settings.Admin.Tokens {
			if tok.Role == "approver" {
				approver = tok.Name
			}
		}
		if approver == "" {
			t.Fatal("admin.tokens has no approver")
		}
		adminURL := "http://" + adminAddr
		deadline := time.Now().Add(30 * time.Second)
		for {
			res := egressgw(t, []string{"EGRESSGW_ADMIN_TOKEN=" + tokens[approver]}, "access", "list", "--admin-url", adminURL, "--tenant", "acme")
			if res.exitCode == 0 && strings.Contains(res.stdout, "pastebin.com") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("egressgw access list as %s: exit %d, want 0 and the refused pastebin.com; output:\n%s", approver, res.exitCode, res.output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if res := egressgw(t, []string{"EGRESSGW_ADMIN_TOKEN="}, "access", "list", "--admin-url", adminURL); res.exitCode == 0 || strings.Contains(res.stdout, "pastebin.com") {
			t.Errorf("egressgw access list without a token: exit %d; want a refusal and no access request; output:\n%s", res.exitCode, res.output())
		}
	})

	t.Run("shared quotas", func(t *testing.T) {
		settings := parseSettings(t, g.gatewayYAML(t, e))
		redis := e.one(t, "Service", "egressgw", "egressgw-redis")
		var redisPort int
		for _, p := range decodeSpec[serviceSpec](t, redis).Ports {
			redisPort = p.Port
		}
		if settings.Quota.Backend != "redis" || settings.Quota.Redis.Addr != fmt.Sprintf("%s:%d", redis.Metadata.Name, redisPort) {
			t.Errorf("quota %+v: want backend redis at the Service %s:%d, so the replicas share one limit", settings.Quota, redis.Metadata.Name, redisPort)
		}
		if settings.Quota.Replicas == nil || g.spec.Replicas == nil || *settings.Quota.Replicas != *g.spec.Replicas {
			t.Errorf("quota.replicas %s differs from the Deployment's replicas %s: each replica's bandwidth share would be wrong", show(settings.Quota.Replicas), show(g.spec.Replicas))
		}
	})

	t.Run("shared state", func(t *testing.T) {
		if g.spec.Replicas == nil {
			t.Fatalf("%s: replicas unset", g.deployment)
		}
		if err := stateShared(parseSettings(t, g.gatewayYAML(t, e)), *g.spec.Replicas); err != nil {
			t.Error(err)
		}
	})
}

// adminTokenSecret holds the admin tokens themselves, for the people and
// automation that run `egressgw access` and `egressgw grant`.
const adminTokenSecret = "egressgw-admin-tokens"

// TestAdminTokens checks that the admin listener, which listens beyond
// loopback for the probes and Prometheus, needs a token for the admin
// API; that the Secret of admin tokens holds, under each token's name, a
// token of gateway.yaml's admin.tokens, as an example value; and that the
// gateway itself never gets that Secret, since it needs only the hashes.
func TestAdminTokens(t *testing.T) {
	e := loadExample(t)
	g := gatewayOf(t, e)
	settings := parseSettings(t, g.gatewayYAML(t, e))
	if err := adminListenerGuarded(settings); err != nil {
		t.Fatal(err)
	}
	tenants := tenantFiles(t, e, g)
	secret := e.lookup(t, "Secret", g.pod.namespace, adminTokenSecret, "the admin tokens")
	for _, tok := range settings.Admin.Tokens {
		token, ok := secret.values[tok.Name]
		if !ok {
			t.Errorf("admin token %q has no key in Secret %s (keys: %v)", tok.Name, adminTokenSecret, slices.Sorted(maps.Keys(secret.values)))
			continue
		}
		sum := sha256.Sum256([]byte(token))
		if hex.EncodeToString(sum[:]) != tok.TokenSHA256 {
			t.Errorf("Secret %s key %s does not hash to admin token %s's token_sha256: the gateway would answer 401", adminTokenSecret, tok.Name, tok.Name)
		}
		if !strings.Contains(token, "example") || !strings.Contains(token, "replace-me") {
			t.Errorf("Secret %s key %s does not read as an example value: a real token must never be committed", adminTokenSecret, tok.Name)
		}
		for _, id := range tok.Tenants {
			if _, ok := tenants[id]; !ok {
				t.Errorf("admin token %s lists tenant %q, which the ConfigMap does not define", tok.Name, id)
			}
		}
	}
	for key := range secret.values {
		if !slices.ContainsFunc(settings.Admin.Tokens, func(tok adminToken) bool { return tok.Name == key }) {
			t.Errorf("Secret %s key %s names no admin.tokens entry", adminTokenSecret, key)
		}
	}
	for _, p := range e.pods {
		for _, v := range p.spec.Volumes {
			for _, r := range v.refs() {
				if r.kind == "Secret" && r.Name == adminTokenSecret {
					t.Errorf("%s mounts Secret %s: the gateway checks hashes and needs no admin token", p, adminTokenSecret)
				}
			}
		}
		for _, c := range p.allContainers() {
			for _, env := range c.Env {
				if env.ValueFrom != nil && env.ValueFrom.SecretKeyRef != nil && env.ValueFrom.SecretKeyRef.Name == adminTokenSecret {
					t.Errorf("%s container %s reads Secret %s into %s: the gateway checks hashes and needs no admin token", p, c.Name, adminTokenSecret, env.Name)
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.SecretRef != nil && ef.SecretRef.Name == adminTokenSecret {
					t.Errorf("%s container %s reads Secret %s: the gateway checks hashes and needs no admin token", p, c.Name, adminTokenSecret)
				}
			}
		}
	}
}

// TestSettingsChecks keeps adminListenerGuarded and stateShared honest:
// each refuses the unsafe settings it exists for.
func TestSettingsChecks(t *testing.T) {
	const hash = "0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name, gatewayYAML  string
		replicas           int
		adminErr, stateErr bool
	}{
		{"loopback admin listener without tokens", `admin_listen: "127.0.0.1:9128"`, 1, false, false},
		{"default admin listener without tokens", ``, 1, false, false},
		{"open admin listener without tokens", `admin_listen: "0.0.0.0:9128"`, 1, true, false},
		{"open admin listener with a viewer only", `{admin_listen: ":9128", admin: {tokens: [{name: v, role: viewer, token_sha256: "` + hash + `"}]}}`, 1, true, false},
		{"open admin listener with an admin", `{admin_listen: ":9128", admin: {tokens: [{name: ops, role: admin, token_sha256: "` + hash + `"}]}}`, 1, false, false},
		{"file state, two replicas", `{admin_listen: "127.0.0.1:9128", state: {backend: file}, quota: {backend: redis, redis: {addr: "r:6379"}}}`, 2, false, true},
		{"default state, two replicas", `{admin_listen: "127.0.0.1:9128", quota: {backend: redis, redis: {addr: "r:6379"}}}`, 2, false, true},
		{"file state, one replica", `{admin_listen: "127.0.0.1:9128", state: {backend: file}}`, 1, false, false},
		{"redis state without an address", `{admin_listen: "127.0.0.1:9128", state: {backend: redis}}`, 2, false, true},
		{"redis state, two replicas", `{admin_listen: "127.0.0.1:9128", state: {backend: redis}, quota: {backend: redis, redis: {addr: "r:6379"}}}`, 2, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := parseSettings(t, tc.gatewayYAML)
			if err := adminListenerGuarded(s); (err != nil) != tc.adminErr {
				t.Errorf("adminListenerGuarded: %v; want an error: %v", err, tc.adminErr)
			}
			if err := stateShared(s, tc.replicas); (err != nil) != tc.stateErr {
				t.Errorf("stateShared with %d replicas: %v; want an error: %v", tc.replicas, err, tc.stateErr)
			}
		})
	}
}

// showMode prints an optional file mode.
func showMode(n *int) string {
	if n == nil {
		return "(unset)"
	}
	return fmt.Sprintf("%#o", *n)
}

// show prints an optional number.
func show(n *int) string {
	if n == nil {
		return "(unset)"
	}
	return strconv.Itoa(*n)
}

// adminGet GETs url, with an admin token when token is not empty, and
// returns the status, the header and the body.
func adminGet(t *testing.T, client *http.Client, url, token string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// jsonErrorCode is the error field of a JSON error body; "" when there is
// none.
func jsonErrorCode(body string) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &e) != nil {
		return ""
	}
	return e.Error
}

// startRedis runs a redis-server on a free loopback port until the test
// ends and returns its address; "" when redis-server is not installed.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Logf("redis-server is not installed, so the state store is not exercised: %v", err)
		return ""
	}
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--port", strconv.Itoa(portOf(t, addr)), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("redis-server output:\n%s", output.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return addr
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("redis-server exited (%v):\n%s", err, output.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server never listened on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
