package main

import (
	"sync"

	"google.golang.org/grpc/resolver"

	"github.com/runbook-dev/runbook/fleet/devserver"
)

// embeddedScheme is the gRPC target scheme of a fleet's embedded server
// that another process hosts (embeddedResolver).
const embeddedScheme = "runbook-fleet-embedded"

// embeddedResolver gives gRPC the address of the embedded server of a
// fleet's folder from the folder's address file (devserver.Running), read
// again each time gRPC asks for it, which it does when a connection fails.
// A server restarted on the folder takes its previous port only when that
// port is free (devserver.Start); one restarted while another process held
// the port listens on another, and a worker that kept the address it
// started with would poll a closed port for ever.
type embeddedResolver struct {
	dir   string // the server's folder
	first string // the address connect found
}

func (b *embeddedResolver) Scheme() string { return embeddedScheme }

func (b *embeddedResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	r := &embeddedResolution{dir: b.dir, cc: cc, addr: b.first}
	if err := cc.UpdateState(resolver.State{Addresses: []resolver.Address{{Addr: b.first}}}); err != nil {
		return nil, err
	}
	return r, nil
}

// embeddedResolution is one client connection's resolution.
type embeddedResolution struct {
	dir string
	cc  resolver.ClientConn
	mu  sync.Mutex
	// addr is the address gRPC has; a folder with no live server (between
	// a server's end and the next's start) leaves it as it is.
	addr string
}

// ResolveNow reads the address file on a goroutine of its own: gRPC calls
// it from its serializer, and UpdateState waits for the connection's lock.
func (r *embeddedResolution) ResolveNow(resolver.ResolveNowOptions) {
	go func() {
		addr, err := devserver.Running(r.dir)
		if err != nil || addr == "" {
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if addr == r.addr {
			return
		}
		r.addr = addr
		r.cc.UpdateState(resolver.State{Addresses: []resolver.Address{{Addr: addr}}})
	}()
}

func (r *embeddedResolution) Close() {}
