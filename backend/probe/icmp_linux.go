package probe

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// icmpConn is a raw ICMP socket (root or CAP_NET_RAW). The kernel hands a raw socket a copy of every ICMP
// message the node receives; ReadEcho keeps the echo replies with this socket's identifier and payload.
type icmpConn struct {
	c  *net.IPConn
	id uint16
}

// Listen opens the raw ICMP socket the prober sends its echo requests from (IPv4).
func Listen() (Conn, error) {
	pc, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open raw ICMP socket for probes: %w", err)
	}
	var id [2]byte
	rand.Read(id[:])
	return &icmpConn{c: pc.(*net.IPConn), id: binary.BigEndian.Uint16(id[:])}, nil
}

func (c *icmpConn) WriteEcho(dst netip.Addr, seq uint16) error {
	if !dst.Is4() {
		return fmt.Errorf("probe %s: only IPv4 is probed", dst)
	}
	if _, err := c.c.WriteToIP(marshalEcho(c.id, seq), &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send echo request to %s: %w", dst, err)
	}
	return nil
}

func (c *icmpConn) ReadEcho() (netip.Addr, uint16, error) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.c.ReadFromIP(buf)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("read echo replies: %w", err)
		}
		seq, err := parseEchoReply(buf[:n], c.id)
		if errors.Is(err, errNotOurs) {
			continue
		}
		src, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		return src.Unmap(), seq, nil
	}
}

func (c *icmpConn) Close() error {
	if err := c.c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
