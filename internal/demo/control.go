package demo

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The demo's nodes are child processes of `runbook demo`; the runbook's
// restart command (`runbook demo restart-node`, run by the cutover once per
// node) asks the demo to restart one of them through a control endpoint on
// loopback, as `systemctl restart minio` asks systemd. Its address and a
// token that authorises the request are in controlFile (0600).
const controlFile = "control"

// serveControl starts the control endpoint and writes controlFile into dir.
func (s *Servers) serveControl(dir string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the demo's control endpoint: %w", err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restart", func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) != 1 {
			http.Error(w, "not authorised", http.StatusUnauthorized)
			return
		}
		n, err := s.MinIO.nodeByEnvFile(r.FormValue("env_file"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		start := time.Now()
		pid, err := n.restart(r.Context())
		if err != nil {
			http.Error(w, fmt.Sprintf("restart %s: %v", n.Name, err), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "restarted %s at %s (pid %d) in %s\n", n.Name, n.URL, pid, time.Since(start).Round(time.Millisecond))
	})
	s.control = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.control.Serve(ln) }()
	line := fmt.Sprintf("http://%s %s\n", ln.Addr(), token)
	if err := os.WriteFile(filepath.Join(dir, controlFile), []byte(line), 0o600); err != nil {
		return fmt.Errorf("write the demo's control file: %w", err)
	}
	return nil
}

// RestartNode asks the demo running in dir to restart the node whose env
// file is envFile, and returns its answer once the node's HTTP server runs
// again. It is the restart command of the demo's runbook.
func RestartNode(ctx context.Context, dir, envFile string) (string, error) {
	if envFile == "" {
		return "", errors.New("no node named: the cutover sets RUNBOOK_ENV_FILE to the node's env file")
	}
	abs, err := filepath.Abs(envFile)
	if err != nil {
		return "", err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "nodes", controlFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no demo runs in %s: its nodes are restarted by the runbook demo that started them", dir)
	}
	if err != nil {
		return "", err
	}
	addr, token, _ := strings.Cut(strings.TrimSpace(string(raw)), " ")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, addr+"/restart", strings.NewReader(url.Values{"env_file": {abs}}.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("ask the demo to restart the node: %w (is the runbook demo in %s still running?)", err, dir)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s", strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// NodeLog returns the last n lines of the log of the node whose env file
// is envFile: the log command of the demo's runbook.
func NodeLog(envFile string, n int) (string, error) {
	if envFile == "" {
		return "", errors.New("no node named: the cutover sets RUNBOOK_ENV_FILE to the node's env file")
	}
	log := filepath.Join(filepath.Dir(envFile), "minio.log")
	if _, err := os.Stat(log); err != nil {
		return "", fmt.Errorf("read the node's log: %w", err)
	}
	return logTail(log, n) + "\n", nil
}
