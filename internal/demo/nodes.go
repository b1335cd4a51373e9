package demo

import (
	"fmt"
	"net"
	"os"
)

// ClusterNodes is how many nodes the demo runs where MinIO allows several on
// one machine.
const ClusterNodes = 4

// containerMarkers are the files by which MinIO decides that it runs in a
// container (MinIO cmd/update.go, IsDocker: Docker's and Podman's).
var containerMarkers = []string{"/.dockerenv", "/run/.containerenv"}

// LoopbackRefused says why MinIO will not form a deployment of several nodes
// on a loopback address of this machine, or "" when it will. In a container
// MinIO waits forever for an endpoint that resolves to a loopback address
// ("resolves to localhost in a containerized deployment", MinIO
// cmd/endpoint.go UpdateIsLocal); it tells a container by the files above or
// by KUBERNETES_SERVICE_HOST, which the demo's servers do not inherit.
func LoopbackRefused() string {
	for _, f := range containerMarkers {
		if _, err := os.Stat(f); err == nil {
			return fmt.Sprintf("this machine is a container (%s exists), where MinIO refuses several nodes on a loopback address (\"resolves to localhost in a containerized deployment\")", f)
		}
	}
	return ""
}

// PlanNodes decides how many nodes the demo runs on address (an IP, ""
// meaning 127.0.0.1): asked, or ClusterNodes where MinIO allows several, else
// one. why explains a single node that was not asked for; err refuses
// several nodes that MinIO would never start.
func PlanNodes(asked int, address string) (nodes int, why string, err error) {
	if address == "" {
		address = "127.0.0.1"
	}
	ip := net.ParseIP(address)
	if ip == nil {
		return 0, "", fmt.Errorf("--address %q is not an IP address", address)
	}
	if asked < 0 {
		return 0, "", fmt.Errorf("--nodes %d: give 1 or more", asked)
	}
	refused := ""
	if ip.IsLoopback() {
		refused = LoopbackRefused()
	} else if !localIP(ip) {
		return 0, "", fmt.Errorf("--address %s is not an address of this machine: the nodes listen on it", address)
	}
	switch {
	case refused != "" && asked > 1:
		return 0, "", fmt.Errorf("%d nodes on %s: %s; give --address with an address of this machine that only it reaches, or --nodes 1", asked, address, refused)
	case asked > 0:
		return asked, "", nil
	case refused != "":
		return 1, refused + "; --address with an address of this machine that only it reaches runs several", nil
	}
	return ClusterNodes, "", nil
}

// localIP reports whether ip is an address of one of this machine's
// interfaces.
func localIP(ip net.IP) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
