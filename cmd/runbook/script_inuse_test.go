package main

import (
	"context"
	"io"
	"net"
	"sort"
	"sync"

	"github.com/minio/kms-go/kms"
	"github.com/rogpeppe/go-internal/testscript"
)

// Script commands that look at the Key Manager emulator the way an auditor
// would after a refused rollback or a lost secret (identity_key_lost.txtar,
// rollback_keys_in_use.txtar), and put a load balancer in front of it
// (rollback_in_use_spelled_otherwise.txtar):
//
//	tcp-proxy NAME TARGET
//	    a TCP load balancer on 127.0.0.1 that passes every connection
//	    through to TARGET (host:port), as an L4 balancer in front of Key
//	    Manager nodes does (TLS passes through); sets NAME (its
//	    127.0.0.1:PORT) and NAME_PORT.
//	tcp-proxy-stop NAME
//	    closes that balancer and every connection through it.
func init() {
	moreScriptCmds["tcp-proxy"] = cmdTCPProxy
	moreScriptCmds["tcp-proxy-stop"] = cmdTCPProxyStop
	// km-delete-enclave NAME: delete an enclave at the Key Manager (KM_*).
	moreScriptCmds["km-delete-enclave"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 1 {
			ts.Fatalf("usage: km-delete-enclave NAME")
		}
		ts.Check(kmClient(ts).DeleteEnclave(context.Background(), &kms.DeleteEnclaveRequest{Name: args[0]}))
	}
	// km-identities ENCLAVE FILE: write the enclave's identities and their
	// privileges, sorted, one a line ("h1:… Admin").
	moreScriptCmds["km-identities"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 2 {
			ts.Fatalf("usage: km-identities ENCLAVE FILE")
		}
		c := kmClient(ts)
		var lines []string
		req := &kms.ListRequest{Enclave: args[0]}
		for {
			page, err := c.ListIdentities(context.Background(), req)
			ts.Check(err)
			for _, id := range page.Items {
				lines = append(lines, id.Identity.String()+" "+id.Privilege.String())
			}
			if page.ContinueAt == "" || len(page.Items) == 0 {
				break
			}
			req = &kms.ListRequest{Enclave: args[0], ContinueAt: page.ContinueAt}
		}
		sort.Strings(lines)
		writeLines(ts, args[1], lines)
	}
}

// proxies are the script's running tcp-proxy balancers, by script and name.
var proxies sync.Map // *testscript.TestScript + NAME -> *tcpProxy

type proxyKey struct {
	ts   *testscript.TestScript
	name string
}

type tcpProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func cmdTCPProxy(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: tcp-proxy NAME TARGET")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	ts.Check(err)
	p := &tcpProxy{ln: ln}
	key := proxyKey{ts, args[0]}
	proxies.Store(key, p)
	target := args[1]
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	ts.Defer(func() { p.close(); proxies.Delete(key) })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ts.Setenv(args[0], ln.Addr().String())
	ts.Setenv(args[0]+"_PORT", port)
}

func cmdTCPProxyStop(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: tcp-proxy-stop NAME")
	}
	p, ok := proxies.Load(proxyKey{ts, args[0]})
	if !ok {
		ts.Fatalf("tcp-proxy-stop: no balancer %s", args[0])
	}
	p.(*tcpProxy).close()
}

func (p *tcpProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
