
# escape=`
FROM alpine
RUN echo `
  not continued
