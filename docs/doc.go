// Package docs holds no code: its tests check that what the README and
// docs/*.md tell a user to copy works — every ```go block compiles against
// this module (code_test.go), and the Node.js attachment recipe runs against
// a real JetStream server (node_test.go).
package docs
