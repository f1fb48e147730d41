/* Dropbear for the TuobaOS stage-2 base: key-only logins (password code not compiled in),
 * one ed25519 host key made on first boot, no sftp/X11/agent forwarding. RSA and ECDSA stay
 * compiled in (2022.83 does not build without them); no host keys of those kinds are made. */
#define DROPBEAR_SVR_PASSWORD_AUTH 0
#define DROPBEAR_SVR_PAM_AUTH 0
#define DROPBEAR_SVR_PUBKEY_AUTH 1
#define DROPBEAR_SVR_AGENTFWD 0
#define DROPBEAR_X11FWD 0
#define DROPBEAR_SFTPSERVER 0
#define DROPBEAR_DSS 0
#define DROPBEAR_ED25519 1
#define DO_MOTD 0
#define DEFAULT_PATH "/usr/sbin:/usr/bin"
