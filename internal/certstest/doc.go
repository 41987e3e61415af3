// Package certstest is an in-memory certificate authority for tests.
//
// Every key is generated at run time (ECDSA P-256, which is fast), so no
// private key is ever committed to the repository. A CA issues server and
// client leaves; option funcs adjust validity, SANs and key usages so tests
// can build expired, not-yet-valid or wrong-usage certificates on purpose.
//
//	ca := certstest.NewCA(t)
//	certPEM, keyPEM := ca.Server(t, "localhost", "127.0.0.1")
//	files := ca.WriteFiles(t, t.TempDir())          // ca.crt, server.crt, server.key
//	client := ca.ClientCertificate(t, "alice")     // tls.Certificate for tls.Config.Certificates
package certstest
