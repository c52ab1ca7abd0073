#SYNTAX = docker/dockerfile:1.7 // extra
  # Check=skip=JSONArgsRecommended;error=true
# escape = \
# unknown=key ends directives
# escape=`
FROM alpine
