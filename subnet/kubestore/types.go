package kubestore

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The store's own views of the core/v1 kinds it reads: a Node (metadata, pod CIDRs, conditions), a list of
// Nodes, and a Pod's node name. Their JSON is core/v1's (same field names), so the API server's objects
// decode into them, dropping the rest. k8s.io/api/core/v1 itself has every core kind (Pod, Service,
// PersistentVolume, ...) with their protobuf code: 5 MB of the weftd binary (41.5 MB, 36.4 MB without),
// for four fields.

// coreV1 is the group version of the core kinds: the legacy group, version v1, at /api.
var coreV1 = schema.GroupVersion{Version: "v1"}

// node is the part of a core/v1 Node the store reads.
type node struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              nodeSpec   `json:"spec,omitempty"`
	Status            nodeStatus `json:"status,omitempty"`
}

type nodeSpec struct {
	PodCIDR  string   `json:"podCIDR,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

type nodeStatus struct {
	Conditions []nodeCondition `json:"conditions,omitempty"`
}

// nodeCondition is core/v1's NodeCondition, field for field (and in its order, so a patch encodes the same).
type nodeCondition struct {
	Type               string      `json:"type"`
	Status             string      `json:"status"`
	LastHeartbeatTime  metav1.Time `json:"lastHeartbeatTime,omitempty"`
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
	Reason             string      `json:"reason,omitempty"`
	Message            string      `json:"message,omitempty"`
}

// The condition flannel sets, and its status values.
const (
	condNetworkUnavailable = "NetworkUnavailable"
	condFalse              = "False"
)

func (n *node) DeepCopyObject() runtime.Object { return n.DeepCopy() }

func (n *node) DeepCopy() *node {
	out := &node{TypeMeta: n.TypeMeta}
	n.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.PodCIDR = n.Spec.PodCIDR
	out.Spec.PodCIDRs = slices.Clone(n.Spec.PodCIDRs)
	out.Status.Conditions = slices.Clone(n.Status.Conditions) // their fields are values
	return out
}

// nodeList is a core/v1 NodeList, what listing Nodes returns.
type nodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []node `json:"items"`
}

func (l *nodeList) DeepCopyObject() runtime.Object {
	out := &nodeList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]node, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

// pod is the part of a core/v1 Pod the store reads: the node it runs on.
type pod struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		NodeName string `json:"nodeName,omitempty"`
	} `json:"spec,omitempty"`
}

func (p *pod) DeepCopyObject() runtime.Object {
	out := &pod{TypeMeta: p.TypeMeta, Spec: p.Spec}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// addCoreTypes registers the store's core/v1 kinds, with meta/v1's Status, options and watch events.
func addCoreTypes(s *runtime.Scheme) {
	s.AddKnownTypeWithName(coreV1.WithKind("Node"), &node{})
	s.AddKnownTypeWithName(coreV1.WithKind("NodeList"), &nodeList{})
	s.AddKnownTypeWithName(coreV1.WithKind("Pod"), &pod{})
	s.AddKnownTypes(coreV1, &metav1.Status{})
	metav1.AddToGroupVersion(s, coreV1)
}
