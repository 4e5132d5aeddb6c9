package main

import (
	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/alloc"
	"github.com/weft-net/weft/backend/hostgw"
	"github.com/weft-net/weft/backend/udp"
	"github.com/weft-net/weft/backend/vxlan"
)

// backends maps a network config's Backend.Type to its constructor. It is the only registry.
var backends = map[string]backend.Factory{
	"alloc":   alloc.New,
	"host-gw": hostgw.New,
	"udp":     udp.New,
	"vxlan":   vxlan.New,
}
