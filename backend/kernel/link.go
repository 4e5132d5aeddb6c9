package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNoLink means the named or indexed link does not exist.
var ErrNoLink = errors.New("link not found")

// LinkTypeError means a link exists but is not of the expected type.
type LinkTypeError struct {
	Name string // the link's name
	Type string // its type ("bridge", "veth", ...)
	Want string // the expected type
}

func (e *LinkTypeError) Error() string {
	return fmt.Sprintf("link %s is a %s, not a %s", e.Name, e.Type, e.Want)
}

// VXLAN describes a unicast VXLAN device (no multicast group, not flow-based).
type VXLAN struct {
	Name      string
	Index     int // set when read from the kernel; ignored on creation
	VNI       int
	Local     netip.Addr // source address of encapsulated packets
	VtepIndex int        // underlay link index (IFLA_VXLAN_LINK); 0 for none
	Port      int        // UDP destination port; 0 is the kernel default (8472) on creation
	Learning  bool
	GBP       bool
	MTU       int              // 0 on creation: the kernel's choice
	MAC       net.HardwareAddr // nil on creation: the kernel picks a random one
	Up        bool             // set when read from the kernel (IFF_UP); ignored on creation

	// FlowBased and HasGroup are set when read from the kernel, for a device Weft did not make.
	FlowBased bool
	HasGroup  bool
}

// LinkState is what a backend checks of a device it owns.
type LinkState struct {
	Index int
	Up    bool // administratively up (IFF_UP)
	MTU   int
}
