// Package kubetestenv runs a real Kubernetes control plane in one process for leakhunt's end-to-end tests:
// embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler, all built from the
// k8s.io/kubernetes Go module. The node is tests/node (a real kubelet with containerd and runc).
//
// The upstream test-server entry points (cmd/*/app/testing) take a *testing.T, so this is a Go test binary
// (`go test -c -o kube-testenv`) with one test that starts everything, writes an admin kubeconfig, prints a
// ready line and then blocks until SIGTERM or SIGINT, when it tears the control plane down in reverse order.
//
//	kube-testenv -data-dir DIR -kubeconfig FILE [-test.timeout 0]
package kubetestenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apiserver/pkg/storage/etcd3/testserver"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/component-base/compatibility"
	"k8s.io/klog/v2"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app/testing"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

var (
	dataDir        = flag.String("data-dir", "", "directory for etcd data, PKI and component state (required)")
	kubeconfigPath = flag.String("kubeconfig", "", "where to write the admin kubeconfig (default DATA_DIR/admin.kubeconfig)")
	readyFile      = flag.String("ready-file", "", "optional file to create once the control plane is ready")
)

// readyLine is what scripts wait for on stdout; keep it stable.
const readyLine = "kube-testenv: ready"

func TestKubeTestenv(t *testing.T) {
	started := time.Now()
	if *dataDir == "" {
		t.Fatal("kube-testenv: -data-dir is required")
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := *kubeconfigPath
	if kubeconfig == "" {
		kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	}
	if kubeconfig, err = filepath.Abs(kubeconfig); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "pki")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	// Stop on SIGTERM (make testenv-down, the smoke test's trap) and SIGINT (Ctrl-C). Everything below
	// registers its teardown with t.Cleanup, which runs in reverse order once this test function returns.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = klog.NewContext(ctx, klog.Background())

	// etcd: a fresh data directory per run (the environment is disposable), free loopback ports.
	etcdCfg := testserver.NewTestConfig(t)
	etcdCfg.Dir = filepath.Join(dir, "etcd")
	if err := os.RemoveAll(etcdCfg.Dir); err != nil {
		t.Fatal(err)
	}
	etcd := testserver.RunEtcd(t, etcdCfg)
	storage := storagebackend.NewDefaultConfig("/registry", nil)
	storage.Transport.ServerList = etcd.Endpoints()

	// kube-apiserver: RBAC as in a normal cluster (the test server defaults to AlwaysAllow), the default
	// admission chain (ServiceAccount, NamespaceLifecycle, ...); the test server already configures a
	// service-account signing key and issuer, so the TokenRequest API works.
	// The apiserver's client certificate for kubelets (logs, exec, port-forward); a real node's
	// kubelet trusts its CA (pki/kubelet-client-ca.crt) and authorizes it as system:masters.
	kubeletClient, err := writeKubeletClientCert(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatalf("kubelet client certificate: %v", err)
	}
	api, err := apiserver.StartTestServer(t, apiserver.NewDefaultTestServerOptions(), []string{
		"--kubelet-client-certificate=" + kubeletClient.cert,
		"--kubelet-client-key=" + kubeletClient.key,
		"--authorization-mode=Node,RBAC",
		"--advertise-address=127.0.0.1",
		"--allow-privileged=true",
		// The only address is loopback, which the kubernetes Service endpoints may not use.
		"--endpoint-reconciler-type=none",
		// A node's name is no DNS name here: reach kubelets (logs, exec) at the address they report.
		"--kubelet-preferred-address-types=InternalIP",
	}, storage)
	if err != nil {
		t.Fatalf("kube-apiserver: %v", err)
	}
	t.Cleanup(api.TearDownFn)

	caFile := filepath.Join(dir, "pki", "ca.crt")
	if err := writeServingCA(api.ServerOpts.SecureServing.ServerCert.CertKey.CertFile, caFile); err != nil {
		t.Fatalf("serving CA: %v", err)
	}
	if err := writeKubeconfig(kubeconfig, api.ClientConfig.Host, caFile, api.ClientConfig.BearerToken); err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	t.Cleanup(func() { _ = os.Remove(kubeconfig) })

	// kube-controller-manager: every controller enabled by default (deployment, replicaset, daemonset, job,
	// garbage collector, namespace, serviceaccount, root-ca publisher, node lifecycle, ...).
	cm, err := controllermanager.StartTestServer(t, ctx, []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--controllers=*",
		"--root-ca-file=" + caFile,
		"--use-service-account-credentials=false",
		// No serving port: the test server would listen on all interfaces; health is checked through the
		// apiserver instead.
		"--secure-port=0",
	})
	if err != nil {
		t.Fatalf("kube-controller-manager: %v", err)
	}
	t.Cleanup(cm.TearDownFn)

	stopScheduler, err := startScheduler(ctx, kubeconfig)
	if err != nil {
		t.Fatalf("kube-scheduler: %v", err)
	}
	t.Cleanup(stopScheduler)

	fmt.Printf("%s server=%s kubeconfig=%s elapsed=%.1fs\n", readyLine, api.ClientConfig.Host, kubeconfig,
		time.Since(started).Seconds())
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(api.ClientConfig.Host+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(*readyFile) })
	}

	<-ctx.Done()
	fmt.Println("kube-testenv: stopping")
}

// writeServingCA copies the CA that signed the apiserver's serving certificate (the last CA certificate in
// the bundle, or the leaf itself when it is self-signed) to dst, for kubeconfigs and pod ca.crt files.
func writeServingCA(bundle, dst string) error {
	data, err := os.ReadFile(bundle)
	if err != nil {
		return err
	}
	var leaf, ca []byte
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("parse %s: %w", bundle, err)
		}
		enc := pem.EncodeToMemory(block)
		if cert.IsCA {
			ca = enc
		} else if leaf == nil {
			leaf = enc
		}
	}
	if ca == nil {
		ca = leaf
	}
	if ca == nil {
		return errors.New("no certificate in " + bundle)
	}
	return os.WriteFile(dst, ca, 0o644)
}

type certFiles struct{ cert, key string }

// writeKubeletClientCert makes a CA (kubelet-client-ca.crt) and a client certificate it signed
// (apiserver-kubelet-client.{crt,key}, group system:masters) in dir.
func writeKubeletClientCert(dir string) (certFiles, error) {
	files := certFiles{
		cert: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		key:  filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return files, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kube-testenv-kubelet-client-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return files, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return files, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return files, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return files, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return files, err
	}
	for path, block := range map[string]*pem.Block{
		filepath.Join(dir, "kubelet-client-ca.crt"): {Type: "CERTIFICATE", Bytes: caDER},
		files.cert: {Type: "CERTIFICATE", Bytes: der},
		files.key:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return files, err
		}
	}
	return files, nil
}

func writeKubeconfig(path, server, caFile, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kube-testenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kube-testenv"] = &clientcmdapi.Context{Cluster: "kube-testenv", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "kube-testenv"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// startScheduler runs kube-scheduler in-process without a serving port. The upstream test server would
// open one on all interfaces (":0"); the environment only listens on loopback.
func startScheduler(ctx context.Context, kubeconfig string) (func(), error) {
	// A registry of its own, as the upstream test server does, so the apiserver's and the
	// controller-manager's feature gates and effective versions are left alone.
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := utilcompatibility.DefaultKubeEffectiveVersionForTest()
	effectiveVersion.SetEmulationVersion(featureGate.EmulationVersion())
	effectiveVersion.SetMinCompatibilityVersion(featureGate.MinCompatibilityVersion())
	registry := compatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(compatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	opts := scheduleroptions.NewOptionsWithComponentGlobalsRegistry(registry)
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse([]string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	}); err != nil {
		return nil, err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cc, sched, err := scheduler.Setup(ctx, opts)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := scheduler.Run(ctx, cc, sched); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "kube-scheduler stopped")
		}
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}, nil
}
