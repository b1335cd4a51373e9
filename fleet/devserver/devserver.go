// Package devserver runs Temporal's server in-process on a SQLite file: the
// embedded server of a fleet's rehearsals and small fleets (docs/fleet.md,
// "On one machine and beyond").
// One process at a time hosts a fleet's server; it holds a lock in the
// server's folder and writes the address there, so that the fleet's other
// commands and workers on this host connect to it instead of starting a
// second one on the same file.
//
// The configuration follows the server module's own SQLite "lite" server
// (go.temporal.io/server temporaltest/internal/lite_server.go), which is
// internal to that module: one history shard, every service in this
// process, all bound to loopback.
package devserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Files in a server's folder.
const (
	dbFile      = "temporal.db"
	lockFile    = "server.lock"
	addressFile = "server.json" // {"address": "127.0.0.1:PORT", "pid": N}
	logFile     = "server.log"
)

// ErrRunning means another process of this host hosts the server on this
// folder; Running tells its address.
var ErrRunning = errors.New("the embedded Temporal server runs in another process")

// Server is an embedded Temporal server.
type Server struct {
	Address string // host:port of the frontend
	dir     string
	lock    *os.File
	srv     temporal.Server
}

type addressRecord struct {
	Address string `json:"address"`
	PID     int    `json:"pid"`
}

// Running returns the address of the server that another process of this
// host hosts on dir, or "" when none does (its lock is free). A server
// records its address as it starts, just after it takes the lock: its
// frontend may not answer yet, and Running waits up to addressWait for a
// record by a live process, never answering with the previous server's.
func Running(dir string) (string, error) {
	deadline := time.Now().Add(addressWait)
	for {
		held, err := lockHeld(dir)
		if err != nil || !held {
			return "", err
		}
		rec, err := readAddress(dir)
		if err == nil && processAlive(rec.PID) {
			return rec.Address, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return "", err
			}
			return "", fmt.Errorf("the embedded server's lock in %s is held, and its address file names process %d, which is not running", dir, rec.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addressWait bounds how long Running waits for a starting server's
// address: it is written within milliseconds of the lock.
const addressWait = 10 * time.Second

// lockHeld tells whether a process holds dir's server lock.
func lockHeld(dir string) (bool, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open server lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false, nil
	}
	return true, nil
}

func readAddress(dir string) (addressRecord, error) {
	var rec addressRecord
	raw, err := os.ReadFile(filepath.Join(dir, addressFile))
	if err == nil {
		err = json.Unmarshal(raw, &rec)
	}
	if err != nil {
		return rec, fmt.Errorf("read the embedded server's address: %w", err)
	}
	return rec, nil
}

// writeAddress records the address by a rename, so that Running never
// reads half a record.
func writeAddress(dir string, rec addressRecord) error {
	raw, _ := json.Marshal(rec)
	tmp := filepath.Join(dir, addressFile+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return fmt.Errorf("record the server's address: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, addressFile)); err != nil {
		return fmt.Errorf("record the server's address: %w", err)
	}
	return nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Start starts a server on dir/temporal.db (creating its schema and the
// namespace the first time) and returns once its frontend answers. A
// restart on the same folder serves the same workflows, on the same port
// when it is free. It returns ErrRunning when another process hosts it.
func Start(dir, namespace string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create server dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open server lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, ErrRunning
	}
	s := &Server{dir: dir, lock: lock}
	if err := s.start(namespace); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(namespace string) error {
	port := s.previousPort()
	if port == 0 || !portFree(port) {
		p, err := freePort()
		if err != nil {
			return err
		}
		port = p
	}
	s.Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// The address is recorded before the server starts, which takes
	// seconds: from the lock on, Running answers for this server, and the
	// previous server's address would send clients to a port this one may
	// not have (it was not free).
	if err := writeAddress(s.dir, addressRecord{Address: s.Address, PID: os.Getpid()}); err != nil {
		return err
	}
	sqlCfg := &config.SQL{
		PluginName:        sqliteplugin.PluginName,
		DatabaseName:      filepath.Join(s.dir, dbFile),
		ConnectAttributes: map[string]string{"mode": "rwc", "_journal_mode": "wal", "_synchronous": "2"},
	}
	if _, err := os.Stat(sqlCfg.DatabaseName); errors.Is(err, os.ErrNotExist) {
		if err := sqlite.SetupSchema(sqlCfg); err != nil {
			return fmt.Errorf("set up the server's database: %w", err)
		}
	}
	ns, err := sqlite.NewNamespaceConfig("active", namespace, false, nil)
	if err != nil {
		return fmt.Errorf("configure namespace %s: %w", namespace, err)
	}
	// Seven days of history after a rollout closes: status and the audit of
	// who approved what stay readable.
	ns.Detail.Config.Retention = durationpb.New(7 * 24 * time.Hour)
	if err := sqlite.CreateNamespaces(sqlCfg, ns); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	cfg, err := s.config(port, sqlCfg)
	if err != nil {
		return err
	}
	logger := log.NewZapLogger(log.BuildZapLogger(log.Config{Level: "warn", OutputFile: filepath.Join(s.dir, logFile)}))
	srv, err := temporal.NewServer(
		temporal.WithConfig(cfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(logger),
		temporal.WithDynamicConfigClient(dynamicconfig.StaticClient{}),
	)
	if err != nil {
		return fmt.Errorf("create the embedded Temporal server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("start the embedded Temporal server: %w", err)
	}
	s.srv = srv
	return nil
}

func (s *Server) config(port int, sqlCfg *config.SQL) (*config.Config, error) {
	cfg := &config.Config{}
	cfg.Global.Membership = config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: "127.0.0.1"}
	cfg.Persistence = config.Persistence{
		DefaultStore:     sqliteplugin.PluginName,
		VisibilityStore:  sqliteplugin.PluginName,
		NumHistoryShards: 1,
		DataStores:       map[string]config.DataStore{sqliteplugin.PluginName: {SQL: sqlCfg}},
	}
	cfg.ClusterMetadata = &cluster.Config{
		FailoverVersionIncrement: 10,
		MasterClusterName:        "active",
		CurrentClusterName:       "active",
		ClusterInformation: map[string]cluster.ClusterInformation{
			"active": {Enabled: true, InitialFailoverVersion: 1, RPCAddress: s.Address},
		},
	}
	cfg.DCRedirectionPolicy = config.DCRedirectionPolicy{Policy: "noop"}
	cfg.Services = map[string]config.Service{}
	for _, name := range temporal.DefaultServices {
		grpc := port
		if name != "frontend" {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			grpc = p
		}
		membership, err := freePort()
		if err != nil {
			return nil, err
		}
		cfg.Services[name] = config.Service{RPC: config.RPC{GRPCPort: grpc, MembershipPort: membership, BindOnIP: "127.0.0.1"}}
	}
	cfg.Archival = config.Archival{History: config.HistoryArchival{State: "disabled"}, Visibility: config.VisibilityArchival{State: "disabled"}}
	cfg.NamespaceDefaults = config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
		History: config.HistoryArchivalNamespaceDefaults{State: "disabled"}, Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
	}}
	cfg.PublicClient = config.PublicClient{HostPort: s.Address}
	return cfg, nil
}

// Stop stops the server and releases the folder.
func (s *Server) Stop() error {
	// The address file stays: the next server on this folder takes the same
	// port when it is free, so workers that knew the address find it again.
	err := s.srv.Stop()
	s.lock.Close()
	return err
}

// previousPort is the port of the last server on this folder, or 0.
func (s *Server) previousPort() int {
	rec, err := readAddress(s.dir)
	if err != nil {
		return 0
	}
	_, p, err := net.SplitHostPort(rec.Address)
	if err != nil {
		return 0
	}
	port, _ := strconv.Atoi(p)
	return port
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
