package udp

import (
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// counter names one statistic. The names are the keys of Stats and of the agent's metrics.
type counter int

const (
	rxPackets           counter = iota // datagrams accepted and written into the TUN
	rxBytes                            // their inner packet bytes
	dropUnknownPeer                    // datagrams from an address that is no peer's PublicIP
	dropBadInnerSource                 // inner source outside the sending peer's subnet
	dropMalformed                      // payload not a well-formed IPv4 packet
	dropNotOurSubnet                   // inner destination outside our subnet
	txPackets                          // packets read from the TUN and sent to a peer
	txBytes                            // their bytes
	dropTxMalformed                    // TUN packets that are not well-formed IPv4
	dropTxNotIPv4                      // TUN packets of another IP version (e.g. the kernel's IPv6 chatter)
	dropNoRoute                        // TUN packets to an address in no peer's subnet
	txNoRouteICMP                      // ICMP net unreachable written back into the TUN for those
	dropICMPRateLimited                // ICMP errors not sent because of the rate limit
	tunReadErrors                      // failed TUN reads (other than close)
	tunWriteErrors                     // failed TUN writes
	udpReadErrors                      // failed socket reads (other than close)
	udpWriteErrors                     // failed socket sends (e.g. no route to the peer's PublicIP)
	dropTruncated                      // datagrams longer than the receive buffer
	tunReads                           // TUN reads (each may carry a super-packet of many packets)
	sendCalls                          // sendmmsg batches
	recvCalls                          // recvmmsg batches
	gsoFallbacks                       // sockets that gave up UDP GSO at run time
	tunGROFallbacks                    // data paths that gave up coalesced TUN writes at run time
	tunRecreated                       // TUN devices recreated after being lost
	socketDrops                        // datagrams dropped by the kernel at our sockets (peer filter, full buffer)
	rxTrailing                         // accepted datagrams with bytes past the inner packet (ignored)
	tunSuperPackets                    // coalesced super-packets written into the TUN (two segments or more each)
	tunSuperPackets6                   // those of them that are IPv6
	tunSuperSegments                   // the received TCP segments they carried
	numCounters
)

var counterNames = [numCounters]string{
	rxPackets:           "rx_packets",
	rxBytes:             "rx_bytes",
	dropUnknownPeer:     "drop_unknown_peer",
	dropBadInnerSource:  "drop_bad_inner_source",
	dropMalformed:       "drop_malformed",
	dropNotOurSubnet:    "drop_not_our_subnet",
	txPackets:           "tx_packets",
	txBytes:             "tx_bytes",
	dropTxMalformed:     "drop_tx_malformed",
	dropTxNotIPv4:       "drop_tx_not_ipv4",
	dropNoRoute:         "drop_no_route",
	txNoRouteICMP:       "tx_no_route_icmp",
	dropICMPRateLimited: "drop_icmp_ratelimited",
	tunReadErrors:       "tun_read_errors",
	tunWriteErrors:      "tun_write_errors",
	udpReadErrors:       "udp_read_errors",
	udpWriteErrors:      "udp_write_errors",
	dropTruncated:       "drop_truncated",
	tunReads:            "tun_reads",
	sendCalls:           "sendmmsg_calls",
	recvCalls:           "recvmmsg_calls",
	gsoFallbacks:        "gso_fallbacks",
	tunGROFallbacks:     "tun_gro_fallbacks",
	tunRecreated:        "tun_recreated",
	socketDrops:         "socket_drops",
	rxTrailing:          "rx_trailing",
	tunSuperPackets:     "tun_super_packets",
	tunSuperPackets6:    "tun_super_packets_ipv6",
	tunSuperSegments:    "tun_super_segments",
}

// rxDrop maps a receive verdict to its counter.
var rxDrop = [...]counter{
	reasonMalformed:      dropMalformed,
	reasonNotIPv4:        dropMalformed,
	reasonUnknownPeer:    dropUnknownPeer,
	reasonBadInnerSource: dropBadInnerSource,
	reasonNotOurSubnet:   dropNotOurSubnet,
	reasonNoRoute:        dropNotOurSubnet, // not produced by acceptRx; kept total
}

// counters is one goroutine's set of statistics. Each packet loop writes only its own set (no false
// sharing between the loops); Stats sums them.
type counters struct {
	v [numCounters]atomic.Uint64
	_ cpu.CacheLinePad
}

func (c *counters) inc(k counter)            { c.v[k].Add(1) }
func (c *counters) add(k counter, n int)     { c.v[k].Add(uint64(n)) }
func (c *counters) get(k counter) (n uint64) { return c.v[k].Load() }
func sumStats(cs ...*counters) map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for k := range numCounters {
		var n uint64
		for _, c := range cs {
			n += c.get(k)
		}
		m[counterNames[k]] = n
	}
	return m
}
