package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ICMP echo messages (RFC 792) as the prober sends and reads them: type, code, checksum, identifier,
// sequence number, then the payload magic, which a reply echoes.
const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
	echoHeaderLen   = 8
)

// magic is the payload of every probe, so that a reply to someone else's echo request with the same
// identifier is not taken for one.
var magic = [8]byte{'w', 'e', 'f', 't', 'p', 'r', 'o', 'b'}

// marshalEcho returns an echo request with identifier id and sequence number seq.
func marshalEcho(id, seq uint16) []byte {
	b := make([]byte, echoHeaderLen+len(magic))
	b[0] = icmpEchoRequest
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[echoHeaderLen:], magic[:])
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// errNotOurs is returned by parseEchoReply for an ICMP message that is not a reply to our requests.
var errNotOurs = errors.New("not a reply to our echo requests")

// parseEchoReply returns the sequence number of b, an ICMP message without IP header, if it is an echo
// reply with identifier id and our payload.
func parseEchoReply(b []byte, id uint16) (uint16, error) {
	if len(b) < echoHeaderLen+len(magic) {
		return 0, fmt.Errorf("ICMP message of %d bytes: %w", len(b), errNotOurs)
	}
	if b[0] != icmpEchoReply || b[1] != 0 || binary.BigEndian.Uint16(b[4:]) != id ||
		[8]byte(b[echoHeaderLen:echoHeaderLen+len(magic)]) != magic {
		return 0, errNotOurs
	}
	if checksum(b) != 0 {
		return 0, fmt.Errorf("ICMP echo reply with a bad checksum: %w", errNotOurs)
	}
	return binary.BigEndian.Uint16(b[6:]), nil
}

// checksum is the Internet checksum (RFC 1071) of b; over a message that carries its checksum it is 0.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
