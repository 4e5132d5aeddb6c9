package etcdtest

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// reservePorts reserves n free TCP ports of 127.0.0.1 for a server's lifetime. Each is held by a socket with
// SO_REUSEPORT, bound to a port the kernel chose (as for a listen on port 0) and never listening, so it
// takes no connections. While it is open the port is in use: no other bind to port 0 and no outgoing
// connection on the host gets it, and a bind to it fails unless the socket also sets SO_REUSEPORT and
// belongs to the same user, as etcd's listeners do with shared set. A stopped server therefore gets its
// ports back on restart.
func reservePorts(n int) (*ports, error) {
	p := &ports{shared: true}
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			p.release()
			return nil, fmt.Errorf("reserve a port: socket: %w", err)
		}
		p.fds = append(p.fds, fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			p.release()
			return nil, fmt.Errorf("reserve a port: set SO_REUSEPORT: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			p.release()
			return nil, fmt.Errorf("reserve a port: bind 127.0.0.1:0: %w", err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			p.release()
			return nil, fmt.Errorf("reserve a port: getsockname: %w", err)
		}
		p.nums = append(p.nums, sa.(*unix.SockaddrInet4).Port)
	}
	return p, nil
}

func (p *ports) release() {
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds = nil
}
