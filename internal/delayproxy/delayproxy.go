// Package delayproxy is the benchmarks' instrument for network latency: a
// TCP proxy that adds a round-trip time to every connection through it.
package delayproxy

import (
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections to a server and delivers every chunk
// of bytes half a round trip after it arrived, in each direction: a
// network with that round-trip time (not a bandwidth limit; chunks in
// flight overlap). TLS handshakes pay it too, as across sites. It is the
// benchmark's instrument for latency to KES and to the Key Manager, not a
// stand-in for either: the real server answers every byte.
type Proxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	wg     sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target (host:port)
// with rtt of added round-trip time. Close stops it.
func Start(target string, rtt time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, oneWay: rtt / 2}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops listening and waits for the accept loop; connections in
// flight end when either side closes.
func (p *Proxy) Close() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *Proxy) forward(c net.Conn) {
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
func (p *Proxy) pump(dst, src net.Conn) {
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
