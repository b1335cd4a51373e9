package testenv

import (
	"io"
	"net"
	"sync"

	"github.com/rogpeppe/go-internal/testscript"
)

// Balancer is a TCP load balancer on 127.0.0.1 that passes every connection
// through to one target, as an L4 balancer in front of Key Manager nodes
// does: TLS passes through, so a client sees the target's certificate.
type Balancer struct {
	Addr string // 127.0.0.1:PORT

	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	once  sync.Once
}

// StartBalancer starts a balancer in front of target (host:port) and closes
// it when the test ends.
func StartBalancer(t TB, target string) *Balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: StartBalancer: %v", err)
	}
	b := &Balancer{Addr: ln.Addr().String(), ln: ln}
	b.wg.Add(1)
	go b.serve(target)
	t.Cleanup(b.Close)
	return b
}

func (b *Balancer) serve(target string) {
	defer b.wg.Done()
	for {
		in, err := b.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, in, out)
		b.mu.Unlock()
		go func() { io.Copy(out, in); out.Close() }()
		go func() { io.Copy(in, out); in.Close() }()
	}
}

// Close stops the balancer and ends every connection through it: the
// target is then unreachable through it, as behind a balancer that is down.
func (b *Balancer) Close() {
	b.once.Do(func() {
		b.ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
}

// balancers are the scripts' tcp-proxy balancers, by script and name.
var balancers sync.Map // balancerKey -> *Balancer

type balancerKey struct {
	ts   *testscript.TestScript
	name string
}

func cmdTCPProxy(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: tcp-proxy NAME TARGET")
	}
	b := StartBalancer(scriptTB{ts}, args[1])
	key := balancerKey{ts, args[0]}
	balancers.Store(key, b)
	ts.Defer(func() { balancers.Delete(key) })
	_, port, _ := net.SplitHostPort(b.Addr)
	ts.Setenv(args[0], b.Addr)
	ts.Setenv(args[0]+"_PORT", port)
}

func cmdTCPProxyStop(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: tcp-proxy-stop NAME")
	}
	b, ok := balancers.Load(balancerKey{ts, args[0]})
	if !ok {
		ts.Fatalf("tcp-proxy-stop: no balancer %s", args[0])
	}
	b.(*Balancer).Close()
}
