package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// delayProxy forwards TCP connections to a server and delivers every chunk
// of bytes half a round trip after it arrived, in each direction: a
// network with that round-trip time (not a bandwidth limit; chunks in
// flight overlap). TLS handshakes pay it too, as across sites. It is the
// benchmark's instrument for latency to KES and to the Key Manager, not a
// stand-in for either: the real server answers every byte.
type delayProxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	wg     sync.WaitGroup
}

// startDelayProxy listens on a free loopback port and forwards to target
// with rtt of added round-trip time.
func startDelayProxy(target string, rtt time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, target: target, oneWay: rtt / 2}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func (p *delayProxy) Close() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *delayProxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(s, c) }()
	go func() { defer wg.Done(); p.pump(c, s) }()
	wg.Wait()
	c.Close()
	s.Close()
}

type chunk struct {
	at   time.Time
	data []byte
}

// pump copies src to dst, each chunk oneWay after it was read; at the end
// of src it closes dst for writing, and on a write error it stops reading.
func (p *delayProxy) pump(dst, src net.Conn) {
	q := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			if d := time.Until(ch.at.Add(p.oneWay)); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.data); err != nil {
				src.Close()
				for range q {
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{at: time.Now(), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
}
