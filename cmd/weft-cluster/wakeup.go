package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// The wake-up probe measures what one user-space hop costs on this machine apart from any work: a small UDP
// datagram bounced between two goroutines over loopback, each blocked in a read until it arrives, so a round
// trip wakes two sleeping goroutines. Spaced as the bench's pings are (the CPUs idle in between) it shows the
// cost of waking an idle CPU; back to back, the cost of the syscalls alone. The udp backend's round trip
// has four such wake-ups (each agent's TUN reader and socket reader, once each way) that kernel VXLAN does
// not have. It runs as `weft-cluster bench-wakeup` inside a namespace of the bench's own (loopback only).

const wakeupRounds = 200

// wakeup is the result: median round trip of two wake-ups, spaced and back to back.
type wakeup struct{ Idle, Busy time.Duration }

func cmdBenchWakeup(ctx context.Context, _ []string, stdout, _ io.Writer) error {
	w, err := measureWakeup(ctx, benchPingInterval)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "idle=%d busy=%d\n", w.Idle.Nanoseconds(), w.Busy.Nanoseconds())
	return nil
}

func measureWakeup(ctx context.Context, spacing time.Duration) (wakeup, error) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return wakeup{}, fmt.Errorf("wake-up probe: %w", err)
	}
	done := make(chan struct{})
	defer func() { srv.Close(); <-done }()
	go func() {
		defer close(done)
		b := make([]byte, 64)
		for {
			n, a, err := srv.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(b[:n], a)
		}
	}()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return wakeup{}, fmt.Errorf("wake-up probe: %w", err)
	}
	defer c.Close()
	round := func() (time.Duration, error) {
		b := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(time.Second))
		t := time.Now()
		if _, err := c.Write([]byte("wake")); err != nil {
			return 0, err
		}
		if _, err := c.Read(b); err != nil {
			return 0, err
		}
		return time.Since(t), nil
	}
	var idle, busy []time.Duration
	for range wakeupRounds {
		if ctx.Err() != nil {
			return wakeup{}, ctx.Err()
		}
		time.Sleep(spacing)
		d, err := round()
		if err != nil {
			return wakeup{}, fmt.Errorf("wake-up probe: %w", err)
		}
		idle = append(idle, d)
	}
	for range wakeupRounds {
		d, err := round()
		if err != nil {
			return wakeup{}, fmt.Errorf("wake-up probe: %w", err)
		}
		busy = append(busy, d)
	}
	return wakeup{Idle: percentile(idle, 50), Busy: percentile(busy, 50)}, nil
}

// wakeup runs the probe in a namespace of its own (loopback only) and returns its result.
func (b *bench) wakeup(ctx context.Context) (wakeup, error) {
	ns, err := kerneltest.CreateNS(b.cfg.prefix + "-wake")
	if ns != nil {
		defer ns.Delete()
	}
	if err != nil {
		return wakeup{}, err
	}
	out, err := runIn(ctx, ns, 30*time.Second, b.self, "bench-wakeup")
	if err != nil {
		return wakeup{}, err
	}
	var idle, busy int64
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "idle=%d busy=%d", &idle, &busy); err != nil {
		return wakeup{}, errors.New("wake-up probe: unexpected output: " + out)
	}
	return wakeup{Idle: time.Duration(idle), Busy: time.Duration(busy)}, nil
}
