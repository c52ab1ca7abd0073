FROM alpine
CMD []
CMD [""]
CMD ["echo", "a b", "\u00e9\n"]
ENTRYPOINT ['single', 'quotes']
ENTRYPOINT [ "unterminated"
RUN ["sh", "-c", "echo hi"] 
VOLUME ["/a", "/b"]
VOLUME /c /d
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
