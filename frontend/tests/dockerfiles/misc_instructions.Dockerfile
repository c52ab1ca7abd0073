from alpine:3.20 as Final
maintainer Jane <jane@example.com>
Expose 8080/tcp 443 80
user app:app
workdir /srv/app
stopsignal SIGTERM
volume /data
add --checksum=sha256:abc --keep-git-dir=false --unpack --link --exclude=*.md --chown=1:1 --chmod=644 https://example.com/a.tar.gz /
copy --parents --exclude=**/*.tmp --exclude=.git --link=false src/ /srv/
