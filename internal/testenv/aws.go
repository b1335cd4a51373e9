package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// AWSSecretsManager is an AWS Secrets Manager API on loopback, played by
// moto's server (moto_server, the Python package moto that this kind of
// machine has installed): no AWS service can run here, and moto is the
// stand-in the machine offers. KES's own AWS key store
// (kes@v0.24.0 internal/keystore/aws, aws-sdk-go v1) talks to it as to
// AWS: it lists every secret of the account and reads SecretString or
// SecretBinary.
type AWSSecretsManager struct {
	URL       string // http://127.0.0.1:PORT
	Region    string // us-east-1
	AccessKey string // moto takes any credentials
	SecretKey string
	LogFile   string

	proc *process
}

// StartAWSSecretsManager starts moto_server and stops it when the test
// ends. It fails the test, naming what is missing, when moto is not
// installed.
func StartAWSSecretsManager(t TB) *AWSSecretsManager {
	t.Helper()
	a, err := startAWSSecretsManager(t)
	if err != nil {
		t.Fatalf("testenv: StartAWSSecretsManager: %v", err)
	}
	return a
}

func startAWSSecretsManager(t TB) (*AWSSecretsManager, error) {
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return nil, fmt.Errorf("moto_server (the Python package moto, which plays AWS Secrets Manager here) is not on PATH: %v", err)
	}
	dir, err := os.MkdirTemp(t.TempDir(), "aws-")
	if err != nil {
		return nil, err
	}
	a := &AWSSecretsManager{Region: "us-east-1", AccessKey: "testing", SecretKey: "testing", LogFile: filepath.Join(dir, "moto.log")}
	err = startWithPortRetry(func() error {
		port, err := freePort()
		if err != nil {
			return err
		}
		a.URL = "http://127.0.0.1:" + strconv.Itoa(port)
		a.proc, err = startProcess(procSpec{
			name:    "moto_server",
			path:    bin,
			args:    []string{"-H", "127.0.0.1", "-p", strconv.Itoa(port)},
			env:     baseEnv("AWS_"),
			dir:     dir,
			logFile: a.LogFile,
			ready: func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/moto-api/", nil)
				if err != nil {
					return err
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("moto answered %s", resp.Status)
				}
				return nil
			},
			readyTimeout: 90 * time.Second,
		})
		if err != nil && strings.Contains(err.Error(), "Address already in use") {
			return fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(a.proc.stop)
	t.Logf("testenv: AWS Secrets Manager (moto) at %s (log %s)", a.URL, a.LogFile)
	return a, nil
}

// KESKeyStore is the keystore block of a kesconf YAML that stores KES's
// keys here.
func (a *AWSSecretsManager) KESKeyStore() string {
	return fmt.Sprintf("keystore:\n  aws:\n    secretsmanager:\n      endpoint: %s\n      region: %s\n      credentials:\n        accesskey: %s\n        secretkey: %s\n", a.URL, a.Region, a.AccessKey, a.SecretKey)
}
