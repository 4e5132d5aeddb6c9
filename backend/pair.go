package backend

import (
	"context"
	"errors"
	"fmt"
)

// Pair returns a Backend that runs two data paths side by side, one per address family (vxlan and host-gw
// in a dual-stack network: flannel's IPv4 and IPv6 devices and routes): Up brings up v4 then v6 and merges
// what they publish (BackendData from v4, BackendV6Data from v6, the smaller MTU, so a container's packets
// of either family fit); Set, Update and Close go to both, keeping going after an error and returning them
// joined. It is an Updater whose Update needs Set (ErrNeedSet) unless both are Updaters, and a Stats that
// adds the two's counters by name.
func Pair(v4, v6 Backend) Backend { return &pair{v4: v4, v6: v6} }

type pair struct{ v4, v6 Backend }

func (p *pair) Up(ctx context.Context) (Local, error) {
	l4, err := p.v4.Up(ctx)
	if err != nil {
		return Local{}, fmt.Errorf("IPv4: %w", err)
	}
	l6, err := p.v6.Up(ctx)
	if err != nil {
		return Local{}, fmt.Errorf("IPv6: %w", err)
	}
	l := Local{BackendType: l4.BackendType, BackendData: l4.BackendData, BackendV6Data: l6.BackendV6Data, MTU: min(l4.MTU, l6.MTU)}
	if l.BackendType == "" {
		l.BackendType = l6.BackendType
	}
	return l, nil
}

func (p *pair) Set(cfg *Config) error {
	return errors.Join(p.v4.Set(cfg), p.v6.Set(cfg))
}

func (p *pair) Update(ch *Change) error {
	u4, ok4 := p.v4.(Updater)
	u6, ok6 := p.v6.(Updater)
	if !ok4 || !ok6 {
		return fmt.Errorf("dual-stack backend: %w", ErrNeedSet)
	}
	return errors.Join(u4.Update(ch), u6.Update(ch))
}

func (p *pair) Close() error {
	return errors.Join(p.v4.Close(), p.v6.Close())
}

func (p *pair) Stats() map[string]uint64 {
	out := map[string]uint64{}
	for _, b := range []Backend{p.v4, p.v6} {
		if s, ok := b.(Stats); ok {
			for k, v := range s.Stats() {
				out[k] += v
			}
		}
	}
	return out
}
