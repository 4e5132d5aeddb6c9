//go:build !linux

package etcdtest

import (
	"fmt"
	"net"
)

// reservePorts returns n ports that were free on 127.0.0.1 a moment ago, without holding them: another
// program may take one while the server is stopped.
func reservePorts(n int) (*ports, error) {
	p := &ports{}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		p.nums = append(p.nums, l.Addr().(*net.TCPAddr).Port)
	}
	return p, nil
}

func (p *ports) release() {}
